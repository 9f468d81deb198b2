"""No window id is emitted twice when a subscription revision leaves and comes back, and no checkpoint that no
running subscription owns is left unemitted after a restart.

A subscription retired or orphaned emits its open windows at once; the same revision back within that window's
span (a rollback A -> B -> A, a reverted version tried again, the document on trial flushed at a restart and
re-applied from the retained message) must not emit that window again under its id: the hub would refuse it as a
``conflict`` and the agent would book it lost. Its events are dead-lettered as ``late`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from edge_agent.broker import Incoming
from edge_agent.dispatcher import Dispatcher
from edge_agent.intake import Intake
from edge_agent.orphans import checkpoint_key
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline
from edge_agent.reconciler import received_path
from edge_agent.runtime.base import HandlerRuntime
from edge_protocol.clocks import STEADY_WALL
from edge_protocol.specs import HandlerSpec, SubscriptionSpec, WindowSpec
from edge_protocol.topics import Topics
from tests.unit.agent.test_desired_all_or_nothing import SA, SA2, V1, World, envelope
from tests.unit.agent.test_pipeline_switch import Fake, FakeLocal

DAY = WindowSpec(size=86_400.0)  # one window for the whole test: every event falls in the same one
SUB = SubscriptionSpec(name="s", topic="t/#", handler="h", window=DAY)
SC = SubscriptionSpec(name="sc", topic="c/#", handler="a", window=DAY)
H = HandlerSpec(name="h", image="h1")


def _records(outbox: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(outbox)) as db:
        return [orjson.loads(body) for (body,) in db.execute("SELECT body FROM records ORDER BY seq")]


def _checkpoint(outbox: Path, key: str) -> dict[str, Any] | None:
    with contextlib.closing(sqlite3.connect(outbox)) as db:
        row = db.execute("SELECT state FROM checkpoints WHERE subscription = ?", (key,)).fetchone()
    return None if row is None else dict(orjson.loads(row[0]))


def _assert_each_id_once(records: list[dict[str, Any]]) -> None:
    twice = [i for i, n in Counter(r["id"] for r in records).items() if n > 1]
    assert not twice, f"window ids emitted twice: {twice}"


async def _feed(d: Dispatcher, outbox: Path, topic: str, n: int, first_mid: int) -> None:
    """``n`` events, and wait until they are accounted for (in the checkpoint, or dead-lettered)."""
    before = d.counters.processed + sum(d.counters.dead_lettered.values())
    for i in range(n):
        await d.put(Incoming(first_mid + i, topic, b'{"v": 1}', 1, False, STEADY_WALL.now()))
    key = checkpoint_key(d.spec)
    async with asyncio.timeout(5):
        while True:
            done = d.counters.processed + sum(d.counters.dead_lettered.values()) - before == n
            snap = _checkpoint(outbox, key)
            open_events = sum(w["events"] for w in snap["windows"]) if snap else 0
            if done and d.backlog == 0 and open_events == d.counters.processed:
                return
            await asyncio.sleep(0.02)


async def test_a_subscription_retired_mid_window_and_added_again_emits_no_window_twice(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    local = FakeLocal()

    def factory(s: HandlerSpec) -> HandlerRuntime:
        return Fake(s)

    async with Outbox(path) as outbox, asyncio.TaskGroup() as tg:
        pipeline = Pipeline(
            device_id="d", topics=Topics(), outbox=outbox, local=local, intake=Intake(local),  # type: ignore[arg-type]
            runtime_factory=factory, max_payload=1024, alarm=lambda _n, _o: None, task_group=tg, probation=0,
        )
        try:
            await pipeline.apply([H], [SUB], gated=False)
            await _feed(pipeline.dispatchers["s"], path, "t/x", 5, 1)
            await pipeline.apply([H], [], gated=False)  # retired mid-window: its window is emitted now
            assert [r["events"] for r in _records(path)] == [5]
            sealed = _checkpoint(path, checkpoint_key(SUB))

            await pipeline.apply([H], [SUB], gated=False)  # the same revision back, within the same window
            back = pipeline.dispatchers["s"]
            await _feed(back, path, "t/x", 3, 10)
            await pipeline.apply([H], [], gated=False)
        finally:
            await pipeline.aclose()
    records = _records(path)
    _assert_each_id_once(records)
    assert [r["events"] for r in records] == [5]
    assert back.counters.dead_lettered["late"] == 3, "its window was emitted: the events are late"
    assert sealed is not None
    assert sealed["windows"] == []
    assert sealed["sealed_to"] is not None


async def test_a_trial_flushed_at_a_restart_and_reapplied_emits_no_window_twice(tmp_path: Path) -> None:
    """The agent dies while a document is on probation; at start it runs the last good one and emits the trial's
    open windows; the retained message then applies the same version again at once."""
    world = World(tmp_path)
    async with world.agent() as dev:
        await dev.reconciler.on_message(V1)
        await _good(dev, 1)
    v2 = envelope(2, {"a": "a2", "b": "b1"}, [SA2, SC])
    async with world.agent(probation=30.0) as dev:
        assert await dev.reconciler.load_stored()
        await dev.reconciler.on_message(v2)
        assert dev.pipeline.trial is not None
        await _feed(dev.pipeline.dispatchers["sc"], world.data / "outbox.sqlite", "c/x", 4, 1)
    # killed on probation: the next start runs v1, then the retained v2 comes again
    async with world.agent(probation=0.3) as dev:
        assert await dev.reconciler.load_stored()
        assert [r["events"] for r in _records(world.data / "outbox.sqlite")] == [4], "the orphan is emitted"
        await dev.reconciler.on_message(v2)
        assert dev.reconciler.applied_version == 2
        back = dev.pipeline.dispatchers["sc"]
        await _feed(back, world.data / "outbox.sqlite", "c/x", 2, 20)
        await _good(dev, 2)
        await dev.reconciler.on_message(envelope(3, {"a": "a1", "b": "b1"}, [SA]))
        await _good(dev, 3)  # v2's subscriptions retired: nothing of sc emitted again
    records = _records(world.data / "outbox.sqlite")
    _assert_each_id_once(records)
    assert [r["events"] for r in records if r["subscription"] == "sc"] == [4]
    assert back.counters.dead_lettered["late"] == 2


async def test_every_checkpoint_no_running_subscription_owns_is_emitted_at_start(tmp_path: Path) -> None:
    """v2 on probation with checkpointed windows; v3 arrives, its received copy is written, and the agent dies
    while pulling it: the next start (v1, the last good) emits v2's windows though no document on disk names
    v2's subscription."""
    world = World(tmp_path)
    async with world.agent() as dev:
        await dev.reconciler.on_message(V1)
        await _good(dev, 1)
    v2 = envelope(2, {"a": "a2", "b": "b1"}, [SA2, SC])
    v3 = envelope(3, {"a": "a3", "b": "b1"}, [SA2])
    pulling = asyncio.Event()
    async with world.agent(probation=30.0) as dev:
        assert await dev.reconciler.load_stored()
        await dev.reconciler.on_message(v2)
        await _feed(dev.pipeline.dispatchers["sc"], world.data / "outbox.sqlite", "c/x", 4, 1)
        dev.pipeline._pull = _hanging_pull(pulling)
        update = asyncio.create_task(dev.reconciler.on_message(v3))
        async with asyncio.timeout(5):
            await pulling.wait()
        assert received_path(world.data / "desired.json").read_bytes() == v3
        update.cancel()  # the agent is killed while pulling v3
        with contextlib.suppress(asyncio.CancelledError):
            await update
    assert _records(world.data / "outbox.sqlite") == []
    async with world.agent() as dev:
        assert await dev.reconciler.load_stored()
        assert dev.reconciler.applied_version == 1
    records = _records(world.data / "outbox.sqlite")
    assert [(r["subscription"], r["events"]) for r in records] == [("sc", 4)]
    sealed = _checkpoint(world.data / "outbox.sqlite", checkpoint_key(SC))
    assert sealed is not None
    assert sealed["windows"] == []


def _hanging_pull(pulling: asyncio.Event) -> Any:
    async def pull(_spec: HandlerSpec) -> None:
        pulling.set()
        await asyncio.Event().wait()

    return pull


async def _good(dev: Any, version: int) -> None:
    async with asyncio.timeout(5):
        while dev.reconciler.good is None or dev.reconciler.good[0].version != version:
            await asyncio.sleep(0.02)


def test_a_sealed_mark_covers_hopping_and_session_windows_and_leaves_the_clock_anchor_alone() -> None:
    from edge_agent.aggregation.windows import WindowSet

    hopping = SubscriptionSpec(name="h", topic="t", handler="h", window=WindowSpec(kind="hopping", size=60, hop=30))
    session = SubscriptionSpec(name="s", topic="t", handler="h", window=WindowSpec(kind="session", gap=10))
    for spec, first, again, fresh in [(hopping, 100.0, 119.0, 121.0), (session, 100.0, 99.0, 105.0)]:
        windows = WindowSet(spec, "d")
        windows.close_due(50.0)
        assert windows.add("g", {}, first)
        emitted = {r.id for r in windows.seal()}
        back = WindowSet(spec, "d")
        assert back.restore(windows.snapshot())
        assert back.resumes_at() == 50.0, "the arrival clock's anchor is the last close, not the seal"
        assert not back.add("g", {}, again), "an event for an emitted window is late"
        assert back.add("g", {}, fresh)
        assert not emitted & {r.id for r in back.seal()}
