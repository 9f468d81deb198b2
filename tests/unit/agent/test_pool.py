"""ReplicaPool: batches split across replicas in order; replicas follow measured load."""

from __future__ import annotations

from typing import Any

from edge_agent.runtime.base import EventTuple, FunctionRuntime, HandlerRuntime, Outcome
from edge_agent.runtime.pool import ReplicaPool
from edge_protocol.specs import HandlerSpec


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Timed(FunctionRuntime):
    """A replica whose batches take ``cost`` seconds of the injected clock."""

    def __init__(self, name: str, clock: Clock, cost: float, seen: list[int]) -> None:
        super().__init__(name, lambda _t, p, _ts: {"v": p, "replica": id(self)})
        self._clock, self._cost, self._seen = clock, cost, seen
        self.closed = False

    async def _process(self, events: list[EventTuple], keys: list[str] | None) -> list[Outcome]:
        self._seen.append(len(events))
        self._clock.now += self._cost
        return await super()._process(events, keys)

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


def _pool(spec: HandlerSpec, clock: Clock, cost: float) -> tuple[ReplicaPool, list[Timed]]:
    made: list[Timed] = []

    def make(_i: int) -> HandlerRuntime:
        replica = Timed(spec.name, clock, cost, [])
        made.append(replica)
        return replica

    return ReplicaPool(spec, make, scale_every=10.0, clock=clock), made


async def test_batch_is_split_across_replicas_and_returned_in_order() -> None:
    clock = Clock()
    pool, made = _pool(HandlerSpec(name="h", image="i", replicas=3), clock, 0.0)
    await pool.start()
    events: list[tuple[str, Any, float]] = [("t", i, 0.0) for i in range(10)]
    outcomes = await pool.process(events)
    assert [o.values["v"] for o in outcomes] == list(range(10))  # type: ignore[union-attr]
    assert [m.calls for m in made] == [4, 4, 2]


async def test_events_of_one_key_stay_in_order_on_one_replica() -> None:
    clock = Clock()
    pool, _made = _pool(HandlerSpec(name="h", image="i", replicas=3), clock, 0.0)
    await pool.start()
    events: list[tuple[str, Any, float]] = [("t", i, 0.0) for i in range(30)]
    keys = [f"k{i % 4}" for i in range(30)]
    outcomes = await pool.process(events, keys)
    assert [o.values["v"] for o in outcomes] == list(range(30))  # type: ignore[union-attr]
    by_key: dict[str, set[int]] = {}
    for key, outcome in zip(keys, outcomes, strict=True):
        by_key.setdefault(key, set()).add(outcome.values["replica"])  # type: ignore[union-attr]
    assert all(len(replicas) == 1 for replicas in by_key.values())


def test_wanted_replicas_follow_e_over_m_times_utilisation() -> None:
    pool, _ = _pool(HandlerSpec(name="h", image="i", replicas=1, max_replicas=8), Clock(), 0.0)
    assert pool.wanted(700, 100) == 8  # 10 wanted, capped at max_replicas
    assert pool.wanted(280, 100) == 4  # 280 / (100 x 0.7) = 4
    assert pool.wanted(50, 100) == 1
    assert pool.wanted(50, None) == 1  # nothing measured: the minimum


async def test_replicas_scale_up_when_busy_and_back_down_when_idle() -> None:
    clock = Clock()
    pool, made = _pool(HandlerSpec(name="h", image="i", replicas=1, max_replicas=3), clock, 1.0)
    await pool.start()
    batch: list[tuple[str, Any, float]] = [("t", i, 0.0) for i in range(6)]
    for _ in range(11):  # busy the whole time: 11 s of processing in 11 s
        await pool.process(batch)
    assert len(pool.replicas) == 2
    for _ in range(11):
        await pool.process(batch)
    assert len(pool.replicas) == 3
    for _ in range(12):  # idle: the clock moves while hardly anything is processed
        clock.now += 5.0
        await pool.process(batch[:1])
    assert len(pool.replicas) == 1
    assert sum(m.closed for m in made) == 2
