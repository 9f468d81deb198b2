"""The handler-runtime boundary: send a batch of events, get one outcome per event."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_protocol.handler_io import PublishRequest, Reply

EventTuple = tuple[str, Any, float]
"""(topic, payload as JSON value, event ts)"""


@dataclass(slots=True)
class Failure:
    """Why an event got no result; ``reason`` is a dead-letter reason."""

    reason: str
    detail: str


Outcome = Reply | Failure


class RuntimeStats:
    """What a rollout gates on, per runtime: results, handler failures, and the worst lag since last read."""

    __slots__ = ("errors", "lag_max", "processed")

    def __init__(self) -> None:
        self.processed = 0
        self.errors = 0
        self.lag_max = 0.0

    def take_lag_ms(self) -> float | None:
        """The worst arrival-to-outcome time since the last call, in ms (None when nothing was processed)."""
        lag, self.lag_max = self.lag_max, 0.0
        return round(lag * 1000, 3) if lag else None


class HandlerRuntime(abc.ABC):
    """One running handler. ``process`` never raises for a single bad event: it returns a Failure for it."""

    name: str
    stats: RuntimeStats

    @abc.abstractmethod
    async def start(self) -> None:
        """Start (or adopt) the handler; raise HandlerStartError when it cannot run."""

    @abc.abstractmethod
    async def process(self, events: list[EventTuple], keys: list[str] | None = None) -> list[Outcome]:
        """Outcomes in the order of ``events``; ``keys`` (one per event) keep each key's events in order when
        the runtime spreads a batch over replicas."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True once the handler answers a ping; False when it cannot (callers bound it with asyncio.timeout)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop the handler and release everything it holds."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """False once the handler exited, hung or could not start."""

    @property
    def state(self) -> str:
        """running, restarting, failed or stopped."""
        return "running" if self.healthy else "restarting"


class FunctionRuntime(HandlerRuntime):
    """In-process runtime around a Python function, for unit tests (the fake of this boundary)."""

    def __init__(self, name: str, func: Callable[[str, Any, float], dict[str, Any]]) -> None:
        self.name = name
        self.stats = RuntimeStats()
        self._func = func
        self._started = False
        self.calls = 0

    async def start(self) -> None:
        self._started = True

    async def process(self, events: list[EventTuple], keys: list[str] | None = None) -> list[Outcome]:
        out: list[Outcome] = []
        for i, (topic, payload, ts) in enumerate(events):
            self.calls += 1
            try:
                values = self._func(topic, payload, ts)
            except Exception as exc:
                out.append(Reply("error", i, {}, [], f"{type(exc).__name__}: {exc}"))
                continue
            publish = [PublishRequest.model_validate(p) for p in values.pop("__publish__", [])]
            out.append(Reply("result", i, values, publish, ""))
        return out

    async def ping(self) -> bool:
        return self._started

    async def aclose(self) -> None:
        self._started = False

    @property
    def healthy(self) -> bool:
        return self._started
