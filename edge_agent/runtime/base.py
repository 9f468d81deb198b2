"""The handler-runtime boundary: send a batch of events, get one outcome per event.

Everything callers (pipeline, dispatcher, reported state, metrics) read of a runtime is declared here, so none
has to probe a runtime for what it might have.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_protocol.deadletter import DeadLetterReason
from edge_protocol.handler_io import PublishRequest, Reply
from edge_protocol.specs import HandlerSpec

EventTuple = tuple[str, Any, float]
"""(topic, payload as JSON value, event ts)"""


@dataclass(slots=True)
class Failure:
    """Why an event got no result: the reason its dead letter carries, and a detail."""

    reason: DeadLetterReason
    detail: str


Outcome = Reply | Failure


class RuntimeStats:
    """What a rollout gates on, per runtime: results, handler failures, and the worst lag per report interval.

    The agent's published reports end the intervals (``end_interval_lag_ms``); everything else (``edge-agent
    status``, the status endpoint, a scrape) only reads (``lag_ms``), so no local read takes away the lag the
    next report must carry.
    """

    __slots__ = ("_lag", "_last_lag", "errors", "processed")

    def __init__(self) -> None:
        self.processed = 0
        self.errors = 0
        self._lag = 0.0
        """The worst lag of the running interval, in seconds (0: nothing processed yet)."""
        self._last_lag = 0.0
        """That of the interval the last report ended."""

    def record(self, outcomes: Sequence[Outcome], lag: float) -> None:
        """Count one batch's outcomes; ``lag`` is the longest arrival-to-outcome time among its events."""
        for outcome in outcomes:
            if isinstance(outcome, Failure) or outcome.kind == "error":
                self.errors += 1
            else:
                self.processed += 1
        if outcomes:
            self._lag = max(self._lag, lag)

    def end_interval_lag_ms(self) -> float | None:
        """For the report being published: the worst arrival-to-outcome time since the last report, in ms (None
        when nothing was processed); a new interval starts."""
        lag, self._last_lag, self._lag = self._lag, self._lag, 0.0
        return _ms(lag)

    def lag_ms(self) -> float | None:
        """For a local read, which changes nothing: the worst arrival-to-outcome time of the interval the last
        report ended and of the running one, in ms (None when nothing was processed in either)."""
        return _ms(max(self._lag, self._last_lag))


def _ms(seconds: float) -> float | None:
    return round(seconds * 1000, 3) if seconds else None


@dataclass(frozen=True, slots=True)
class RuntimeDescription:
    """What the reported state shows of a runtime beside its health and counters."""

    image: str
    restarts: int
    container: str | None
    """The container serving now (for a pool, that of its first healthy replica)."""
    replicas: int = 1
    arrival_rate: float | None = None
    """E: events per second offered in the pool's last evaluation window (None unless scaled by load)."""
    capacity_per_replica: float | None = None
    """m: events per busy second of one replica in that window."""
    oom_kills: int = 0
    """Times a container of the handler was killed for memory (the kernel's OOM killer, inside its limit)."""


class HandlerRuntime(abc.ABC):
    """One running handler. ``process`` never raises for a single bad event: it returns a Failure for it."""

    name: str
    spec: HandlerSpec
    stats: RuntimeStats

    async def process(
        self, events: list[EventTuple], keys: list[str] | None = None, queued: Sequence[float] | None = None
    ) -> list[Outcome]:
        """Outcomes in the order of ``events``, counted in ``stats``. ``keys`` (one per event) keep each key's
        events in order when the runtime spreads a batch over replicas; ``queued`` (one per event) is how long
        each waited before this call, so that the lag counted runs from its arrival."""
        started = time.monotonic()
        outcomes = await self._process(events, keys)
        waited = max(queued, default=0.0) if queued is not None else 0.0
        self.stats.record(outcomes, waited + time.monotonic() - started)
        return outcomes

    @abc.abstractmethod
    async def _process(self, events: list[EventTuple], keys: list[str] | None) -> list[Outcome]:
        """The runtime's own part of ``process``: one outcome per event, in order."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start (or adopt) the handler; raise HandlerStartError when it cannot run."""

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

    @property
    def restarts(self) -> int:
        """Times the handler was replaced after an exit or a hang (a crash loop shows here)."""
        return 0

    @property
    def oom_kills(self) -> int:
        """Of those, times it was killed for memory (the kernel's OOM killer, inside the spec's limit)."""
        return 0

    @property
    def container_id(self) -> str | None:
        """The container serving now, if the handler runs in one."""
        return None

    def describe(self) -> RuntimeDescription:
        return RuntimeDescription(
            image=self.spec.image, restarts=self.restarts, container=self.container_id, oom_kills=self.oom_kills
        )


IN_PROCESS_IMAGE = "in-process"
"""The image a FunctionRuntime made without a spec reports: it runs no image."""


class FunctionRuntime(HandlerRuntime):
    """In-process runtime around a Python function, for unit tests (the fake of this boundary)."""

    def __init__(
        self, name: str, func: Callable[[str, Any, float], dict[str, Any]], *, spec: HandlerSpec | None = None
    ) -> None:
        self.name = name
        self.spec = spec or HandlerSpec(name=name, image=IN_PROCESS_IMAGE)
        self.stats = RuntimeStats()
        self._func = func
        self._started = False
        self.calls = 0

    async def start(self) -> None:
        self._started = True

    async def _process(self, events: list[EventTuple], keys: list[str] | None) -> list[Outcome]:
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
