"""The agent's exceptions. Third-party errors are translated at each boundary, ``raise ... from exc``.

AgentError
├── ConfigError            invalid configuration (field paths in ``errors``); exit code 2
├── BrokerError            the local or cloud broker refused or dropped us
├── OutboxError            the SQLite outbox failed (disk full, corruption)
└── HandlerError           a handler container (``handler`` attribute)
    ├── HandlerStartError  image missing, create/start refused by the engine
    └── HandlerGone        the container exited or closed its stdout mid-batch
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is invalid; ``errors`` holds one ``path: reason`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class BrokerError(AgentError):
    """A broker connection failed."""


class OutboxError(AgentError):
    """The durable outbox could not be read or written."""


class HandlerError(AgentError):
    """A handler container failed."""

    def __init__(self, handler: str, reason: str) -> None:
        super().__init__(f"handler {handler}: {reason}")
        self.handler = handler
        self.reason = reason


class HandlerStartError(HandlerError):
    """The engine could not create or start the handler's container."""


class HandlerExitedAtStart(HandlerStartError):
    """The handler's container exited before it connected to the agent's socket: a crash, not a refusal."""


class HandlerGone(HandlerError):
    """The handler's container exited or closed its output."""
