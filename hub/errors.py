"""The hub's exceptions: third-party errors are translated into these at each boundary.

::

    HubError                    anything the hub raises on purpose
    ├── ConfigError             the configuration cannot be loaded (.errors: one "path: message" per problem)
    ├── StoreError              the SQL store failed (.operation: what the store was doing)
    │   └── StoreConflict       a uniqueness or foreign-key constraint refused a write
    ├── BrokerError             the MQTT broker refused, timed out or is not connected (.topic when known)
    ├── ClientError             the hub API answered with an error or cannot be reached (.status when known)
    ├── RegistryError           an image registry cannot be reached or has no such image (API: 502)
    ├── NotFound                a named handler, subscription, device or document does not exist (API: 404)
    ├── Conflict                the request contradicts the current state, e.g. a handler in use (API: 409)
    └── Unprocessable           the request is well-formed but refers to something invalid (API: 422)
"""

from __future__ import annotations

from collections.abc import Sequence


class HubError(Exception):
    """Base class of every exception the hub raises on purpose."""


class ConfigError(HubError):
    """The configuration is invalid; ``errors`` holds one ``field.path: message`` line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


class StoreError(HubError):
    """A store operation failed (the database is unreachable, locked for too long, full...)."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"store {operation} failed: {reason}")


class StoreConflict(StoreError):
    """A write refused by a constraint (unique key, foreign key): the caller may re-read and retry."""


class BrokerError(HubError):
    """An MQTT operation failed or was attempted while disconnected."""

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        self.reason = reason
        self.topic = topic
        super().__init__(f"{reason} (topic {topic})" if topic else reason)


class ClientError(HubError):
    """The hub API refused a request or could not be reached; the message is meant for a human."""

    def __init__(self, message: str, *, status: int | None = None, details: Sequence[str] = ()) -> None:
        self.status = status
        self.details = list(details)
        """One line per problem when the API listed several (validation errors), else empty."""
        super().__init__(message)


class RegistryError(HubError):
    """An image registry could not resolve a reference: unreachable, unknown repository or tag, refused."""

    def __init__(self, reference: str, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(f"{reference}: {reason}")


class NotFound(HubError):
    """The named thing does not exist."""


class Conflict(HubError):
    """The request contradicts the current state (a handler still in use, a name already taken...)."""


class Unprocessable(HubError):
    """The request refers to something it cannot (a subscription naming an unknown handler...)."""
