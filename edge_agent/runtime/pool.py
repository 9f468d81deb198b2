"""Replicas of one handler, sized by measured load.

A batch is split into contiguous parts, one per replica, processed concurrently and put back in order. The
pool measures each replica's busy time; every ``scale_every`` seconds it adds a replica (up to
``max_replicas``) when the replicas were busy more than ``scale_up_at`` of the time, and removes one (down to
``replicas``) when they were busy less than ``scale_down_at``. Event order is kept within a batch's parts, not
across replicas: a handler that keeps state across events should run one replica.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from edge_agent.runtime.base import EventTuple, HandlerRuntime, Outcome, RuntimeStats
from edge_protocol.specs import HandlerSpec

log = logging.getLogger(__name__)


class ReplicaPool(HandlerRuntime):
    """Several runtimes of one spec behind the single-runtime interface."""

    def __init__(
        self,
        spec: HandlerSpec,
        make: Callable[[int], HandlerRuntime],
        *,
        scale_every: float = 10.0,
        scale_up_at: float = 0.8,
        scale_down_at: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.stats = RuntimeStats()
        self._make = make
        self._min = spec.replicas
        self._max = max(spec.max_replicas or spec.replicas, spec.replicas)
        self._every, self._up, self._down = scale_every, scale_up_at, scale_down_at
        self._clock = clock
        self.replicas: list[HandlerRuntime] = []
        self._busy = 0.0
        self._window_start = clock()
        self._lock = asyncio.Lock()

    @property
    def healthy(self) -> bool:
        return any(r.healthy for r in self.replicas)

    @property
    def state(self) -> str:
        states = {r.state for r in self.replicas}
        for s in ("running", "restarting", "failed"):
            if s in states:
                return s
        return "stopped"

    @property
    def restarts(self) -> int:
        return sum(int(getattr(r, "restarts", 0)) for r in self.replicas)

    @property
    def container_id(self) -> str | None:
        return next((getattr(r, "container_id", None) for r in self.replicas if r.healthy), None)

    async def start(self) -> None:
        self.replicas = [self._make(i) for i in range(self._min)]
        results = await asyncio.gather(*(r.start() for r in self.replicas), return_exceptions=True)
        errors = [e for e in results if isinstance(e, BaseException)]
        if len(errors) == len(self.replicas):
            raise errors[0]
        for err in errors:
            log.error("handler %s: a replica did not start: %s", self.name, err)

    async def process(self, events: list[EventTuple]) -> list[Outcome]:
        async with self._lock:
            started = self._clock()
            n = len(self.replicas)
            size = math.ceil(len(events) / n)
            parts = [events[i : i + size] for i in range(0, len(events), size)]
            results = await asyncio.gather(*(r.process(p) for r, p in zip(self.replicas, parts, strict=False)))
            # Busy time of all replicas together: each part kept one replica busy for the whole call at most.
            self._busy += (self._clock() - started) * len(parts) / n
            await self._maybe_scale()
        return [outcome for part in results for outcome in part]

    async def _maybe_scale(self) -> None:
        now = self._clock()
        span = now - self._window_start
        if span < self._every:
            return
        utilization = self._busy / span
        self._busy, self._window_start = 0.0, now
        n = len(self.replicas)
        if utilization > self._up and n < self._max:
            replica = self._make(n)
            try:
                await replica.start()
            except Exception as exc:
                log.error("handler %s: scale-up replica did not start: %s", self.name, exc)
                return
            self.replicas.append(replica)
            log.info("handler %s: %d replicas (busy %.0f%%)", self.name, n + 1, utilization * 100)
        elif utilization < self._down and n > self._min:
            replica = self.replicas.pop()
            await replica.aclose()
            log.info("handler %s: %d replicas (busy %.0f%%)", self.name, n - 1, utilization * 100)

    async def ping(self) -> bool:
        results = await asyncio.gather(*(r.ping() for r in self.replicas))
        return all(results) and bool(results)

    async def aclose(self) -> None:
        async with self._lock:
            await asyncio.gather(*(r.aclose() for r in self.replicas), return_exceptions=True)
