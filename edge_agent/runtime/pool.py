"""Replicas of one handler, as many as its measured capacity needs (E = m x P).

Every ``scale_every`` seconds the pool measures the arrival rate E (events offered per second) and each
replica's capacity m (events per busy second) and runs P = ceil(E / (m x target_utilization)) replicas within
[replicas, max_replicas]. It grows at once and shrinks only after two evaluations in a row asked for fewer, so
P does not flap. A batch is split across replicas -- by the subscription's key when it names one, else in
contiguous parts -- and the outcomes are put back in the batch's order.

A key is served by one replica for as long as the replica count stays the same, whichever other keys share
its batch, so that its events stay in order and whatever a handler keeps per key stays on one replica. The
replica is chosen by rendezvous hashing (the highest hash of key and replica number wins), so that a scale from
n to n + 1 replicas moves only the keys the new replica wins (about 1 in n + 1) and a shrink only those of the
replica that goes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable

from edge_agent.runtime.base import EventTuple, HandlerRuntime, Outcome, RuntimeDescription, RuntimeStats
from edge_protocol.specs import HandlerSpec

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1 << 16)
def replica_of(key: str, replicas: int) -> int:
    """The replica (0 .. ``replicas`` - 1) that serves ``key``: rendezvous hashing, stable while ``replicas``
    is, and moving only the keys a new replica wins when it grows."""
    encoded = key.encode()

    def score(replica: int) -> bytes:
        return hashlib.blake2b(encoded, digest_size=8, salt=replica.to_bytes(8, "big")).digest()

    return max(range(replicas), key=score)


class ReplicaPool(HandlerRuntime):
    """Several runtimes of one spec behind the single-runtime interface."""

    def __init__(
        self,
        spec: HandlerSpec,
        make: Callable[[int], HandlerRuntime],
        *,
        scale_every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.stats = RuntimeStats()
        self._make = make
        self._min = spec.replicas
        self._max = max(spec.max_replicas or spec.replicas, spec.replicas)
        self._utilization = spec.target_utilization
        self._every = scale_every
        self._clock = clock
        self.replicas: list[HandlerRuntime] = []
        self._busy = 0.0
        self._offered = 0
        self._below = 0
        self._window_start = clock()
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        self.arrival_rate: float | None = None
        """E: events per second offered in the last evaluation window."""
        self.capacity: float | None = None
        """m: events per busy second of one replica in the last evaluation window."""

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
        return sum(r.restarts for r in self.replicas)

    @property
    def oom_kills(self) -> int:
        return sum(r.oom_kills for r in self.replicas)

    @property
    def container_id(self) -> str | None:
        return next((r.container_id for r in self.replicas if r.healthy), None)

    def describe(self) -> RuntimeDescription:
        return RuntimeDescription(
            image=self.spec.image,
            restarts=self.restarts,
            container=self.container_id,
            replicas=len(self.replicas),
            arrival_rate=self.arrival_rate,
            capacity_per_replica=self.capacity,
            oom_kills=self.oom_kills,
        )

    async def start(self) -> None:
        self.replicas = [self._make(i) for i in range(self._min)]
        results = await asyncio.gather(*(r.start() for r in self.replicas), return_exceptions=True)
        errors = [e for e in results if isinstance(e, BaseException)]
        if len(errors) == len(self.replicas):
            raise errors[0]
        for err in errors:
            log.error("handler %s: a replica did not start: %s", self.name, err)
        # Evaluated on a timer too, not only per batch: with no events at all, E = 0 must still shrink the pool.
        self._ticker = asyncio.create_task(self._tick(), name=f"agent.replicas[{self.name}]")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            async with self._lock:
                await self._maybe_scale()

    def _parts(self, count: int, keys: list[str] | None) -> list[tuple[int, list[int]]]:
        """(replica, the batch's indices it serves) for each replica with something to do."""
        n = len(self.replicas)
        if keys is not None:
            parts: dict[int, list[int]] = {}
            for i, key in enumerate(keys):
                parts.setdefault(replica_of(key, n), []).append(i)
            return sorted(parts.items())
        size = max(1, math.ceil(count / n))
        return [(r, list(range(i, min(i + size, count)))) for r, i in enumerate(range(0, count, size))]

    async def _process(self, events: list[EventTuple], keys: list[str] | None) -> list[Outcome]:
        async with self._lock:
            started = self._clock()
            parts = self._parts(len(events), keys)
            results = await asyncio.gather(
                *(self.replicas[r].process([events[i] for i in part]) for r, part in parts)
            )
            # Each part kept one replica busy for at most the whole call: an upper bound of busy time, so m is
            # if anything underestimated and the pool errs towards one replica more.
            self._busy += (self._clock() - started) * len(parts)
            self._offered += len(events)
            await self._maybe_scale()
        outcomes: list[Outcome | None] = [None] * len(events)
        for (_replica, part), part_outcomes in zip(parts, results, strict=True):
            for i, outcome in zip(part, part_outcomes, strict=True):
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    def wanted(self, arrival_rate: float, capacity: float | None) -> int:
        """P = ceil(E / (m x utilisation)) within [replicas, max_replicas]."""
        if not capacity:
            return self._min
        p = math.ceil(arrival_rate / (capacity * self._utilization))
        return max(self._min, min(self._max, p))

    async def _maybe_scale(self) -> None:
        now = self._clock()
        span = now - self._window_start
        if span < self._every:
            return
        self.arrival_rate = self._offered / span
        self.capacity = self._offered / self._busy if self._busy > 0 else None
        self._busy, self._offered, self._window_start = 0.0, 0, now
        want, n = self.wanted(self.arrival_rate, self.capacity), len(self.replicas)
        if want > n:
            self._below = 0
            await self._grow(want)
        elif want < n:
            self._below += 1
            if self._below >= 2:
                self._below = 0
                replica = self.replicas.pop()
                await replica.aclose()
                log.info("handler %s: %d replicas (E=%.0f/s, m=%.0f/s)", self.name, n - 1, self.arrival_rate,
                         self.capacity or 0)
        else:
            self._below = 0

    async def _grow(self, want: int) -> None:
        for i in range(len(self.replicas), want):
            replica = self._make(i)
            try:
                await replica.start()
            except Exception as exc:  # scaling up is best effort: the pool keeps what runs
                log.error("handler %s: scale-up replica did not start: %s", self.name, exc)
                return
            self.replicas.append(replica)
        log.info("handler %s: %d replicas (E=%.0f/s, m=%.0f/s)", self.name, len(self.replicas),
                 self.arrival_rate or 0, self.capacity or 0)

    async def ping(self) -> bool:
        results = await asyncio.gather(*(r.ping() for r in self.replicas))
        return all(results) and bool(results)

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        async with self._lock:
            await asyncio.gather(*(r.aclose() for r in self.replicas), return_exceptions=True)
