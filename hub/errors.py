"""The hub's exceptions: third-party errors are translated into these at each boundary.

::

    HubError                    anything the hub raises on purpose
    ├── ConfigError             the configuration cannot be loaded (.errors: one "path: message" per problem)
    ├── StoreError              the SQL store failed (.operation: what the store was doing)
    ├── BrokerError             the MQTT broker refused, timed out or is not connected (.topic when known)
    └── ClientError             the hub API answered with an error or cannot be reached (.status when known)
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


class BrokerError(HubError):
    """An MQTT operation failed or was attempted while disconnected."""

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        self.reason = reason
        self.topic = topic
        super().__init__(f"{reason} (topic {topic})" if topic else reason)


class ClientError(HubError):
    """The hub API refused a request or could not be reached; the message is meant for a human."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)
