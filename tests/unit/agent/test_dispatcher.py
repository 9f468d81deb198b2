"""The dispatcher with the in-process FunctionRuntime, a real outbox, fake publish/ack and an injected clock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_agent.aggregation.windows import WindowSet
from edge_agent.broker import Incoming
from edge_protocol.aggregate import WindowResult
from tests.unit.agent.dispatcher_harness import DL_TOPIC, FakePublish, MakeHarness, harnesses


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    async with harnesses(tmp_path) as build:
        yield build


async def test_valid_events_aggregate_into_windows(make: MakeHarness) -> None:
    h = make()
    async with h.outbox:
        h.start()
        for i, c in enumerate([20.0, 22.0, 24.0], start=1):
            await h.dispatcher.put(h.msg(i, {"c": c}))
        await h.until_acked(3)
        assert await h.records() == []
        h.clock.t = 1011.0  # next window: the first closes on this batch
        await h.dispatcher.put(h.msg(4, {"c": 30.0}))
        await h.finish()
        records = await h.records()
        assert [(r.window_start, r.events) for r in records] == [(1000.0, 3)]
        state = records[0].fields["c"]
        assert (state.count, state.sum, state.min, state.max, state.mean) == (3, 66.0, 20.0, 24.0, 22.0)
        assert "label" not in records[0].fields  # strings are not aggregated
        assert sorted(h.acked) == [1, 2, 3, 4]
        assert h.dispatcher.counters.processed == 4
        assert h.dispatcher.counters.windows_closed == 1
        assert h.dispatcher.backlog == 0
        # The open window [1010, 1020) is in the checkpoint, restorable by a fresh WindowSet.
        (snap,) = (await h.outbox.checkpoints()).values()
        again = WindowSet(h.dispatcher.spec, "dev")
        assert again.restore(snap)
        assert [(r.window_start, r.events) for r in again.close_due(1e12)] == [(1010.0, 1)]


async def test_ack_only_after_commit(make: MakeHarness, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def ack(msg: Incoming) -> None:
        # Read the outbox from another connection: the effect of this event must already be durable.
        with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
            row = db.execute("SELECT state FROM checkpoints WHERE subscription = 'temp'").fetchone()
        assert row is not None, f"event {msg.mid} acknowledged before any commit"
        snap = orjson.loads(row[0])
        seen.append((msg.mid, sum(w["events"] for w in snap["windows"])))

    h = make(ack=ack)
    async with h.outbox:
        h.start()
        for i in range(1, 6):
            await h.dispatcher.put(h.msg(i, {"c": float(i)}))
        await h.finish()
    assert [mid for mid, _ in seen] == [1, 2, 3, 4, 5]
    assert all(events >= 5 for _, events in seen), seen  # one batch: the checkpoint holds all five


async def test_rejects_become_dead_letters_and_are_acked(make: MakeHarness) -> None:
    h = make(max_payload=64)
    async with h.outbox:
        h.start()
        oversized = b'{"c": "' + b"x" * 100 + b'"}'
        await h.dispatcher.put(h.msg(1, None, raw=b"{not json"))
        await h.dispatcher.put(h.msg(2, None, raw=oversized))
        await h.dispatcher.put(h.msg(3, "boom"))
        await h.dispatcher.put(h.msg(4, None, raw=b"\xff\xfe"))
        await h.dispatcher.put(h.msg(5, {"c": 1.5}))
        await h.finish()
    dls = {d.payload_bytes(): d for d in h.publish.deadletters()}
    assert {p: d.reason for p, d in dls.items()} == {
        b"{not json": "invalid-json",
        oversized: "oversized",
        b'"boom"': "handler-error",
        b"\xff\xfe": "invalid-json",
    }
    assert dls[b"\xff\xfe"].payload_encoding == "base64"
    assert dls[b"{not json"].payload_encoding == "utf-8"
    assert "KeyError" in dls[b'"boom"'].detail
    assert "> 64" in dls[oversized].detail
    assert all(d.subscription == "temp" and d.handler == "h" and d.topic == "sensors/s1/temp" for d in dls.values())
    assert all(qos == 1 for t, _, qos in h.publish.sent if t == DL_TOPIC)
    assert sorted(h.acked) == [1, 2, 3, 4, 5]
    c = h.dispatcher.counters
    assert c.dead_lettered == {"invalid-json": 2, "oversized": 1, "handler-error": 1}
    assert c.processed == 1


async def test_late_event_is_dead_lettered(make: MakeHarness) -> None:
    h = make(event_time_field="t")
    async with h.outbox:
        h.start()
        await h.dispatcher.put(h.msg(1, {"c": 1.0, "t": 1000.0}))
        await h.dispatcher.put(h.msg(2, {"c": 2.0, "t": 100.0}))  # nothing closed yet: not late
        await h.until_acked(2)
        assert [(r.window_start, r.events) for r in await h.records()] == [(100.0, 1)]  # closed at now=1000
        await h.dispatcher.put(h.msg(3, {"c": 3.0, "t": 105.0}))  # its window [100, 110) was emitted
        await h.dispatcher.put(h.msg(4, {"c": 4.0, "t": 1001.0}))
        await h.finish()
    (dl,) = h.publish.deadletters()
    assert (dl.reason, orjson.loads(dl.payload)) == ("late", {"c": 3.0, "t": 105.0})
    assert h.dispatcher.windows.late == 1
    assert sorted(h.acked) == [1, 2, 3, 4]
    assert h.dispatcher.counters.processed == 3


async def test_handler_publications_are_awaited_before_ack(make: MakeHarness) -> None:
    pub = FakePublish(deferred=True)
    acks: list[tuple[int, bool]] = []
    h = make(publish=pub, ack=lambda m: acks.append((m.mid, all(f.done() for f in pub.futures))))
    async with h.outbox:
        h.start()
        await h.dispatcher.put(h.msg(1, {"c": 40.0, "alert": True}))
        await h.dispatcher.put(h.msg(2, None, raw=b"nope"))
        await h.finish()
    assert [(t, orjson.loads(p), q) for t, p, q in pub.sent if t == "alerts/hot"] == [("alerts/hot", {"c": 40.0}, 1)]
    assert len(pub.futures) == 2  # the publication and the dead letter
    assert acks == [(1, True), (2, True)]
    assert h.dispatcher.counters.published == 1


async def test_drop_oldest_overflow(make: MakeHarness) -> None:
    h = make(overflow="drop-oldest", queue_size=2)
    async with h.outbox:
        for i in range(1, 6):  # nothing is running yet: the queue overflows
            await h.dispatcher.put(h.msg(i, {"c": float(i)}))
        assert h.dispatcher.counters.dropped_overflow == 3
        assert h.acked == [1, 2, 3]  # dropped events are acknowledged (counted, not redelivered forever)
        assert h.dispatcher.backlog == 2
        await h.finish()
        assert h.dispatcher.counters.received == 5
        assert h.dispatcher.counters.processed == 2
        assert h.acked == [1, 2, 3, 4, 5]


async def test_drain_processes_everything_in_batches(make: MakeHarness) -> None:
    h = make(batch_size=7)
    async with h.outbox:
        for i in range(1, 51):
            await h.dispatcher.put(h.msg(i, {"c": 1.0}))
        assert h.dispatcher.backlog == 50
        h.start()
        await h.dispatcher.drain()
        assert h.dispatcher.backlog == 0
        assert sorted(h.acked) == list(range(1, 51))
        assert h.dispatcher.counters.processed == 50
        assert h.dispatcher.runtime.calls == 50  # type: ignore[attr-defined]
        assert h.task is not None
        await asyncio.wait_for(h.task, 5)
        assert h.task.done()


async def test_drain_closes_due_windows(make: MakeHarness) -> None:
    h = make(group_by=["topic[1]"])
    async with h.outbox:
        await h.dispatcher.put(h.msg(1, {"c": 1.0}, topic="sensors/a/temp"))
        await h.dispatcher.put(h.msg(2, {"c": 2.0}, topic="sensors/b/temp"))
        h.start()
        await h.until_acked(2)
        assert await h.records() == []
        h.clock.t = 2000.0
        await h.finish()  # the final tick on drain closes what is due, though no event arrived since
        assert [(r.group, r.events) for r in await h.records()] == [("topic[1]=a", 1), ("topic[1]=b", 1)]


async def test_an_idle_stream_closes_its_window_when_due(make: MakeHarness) -> None:
    """No event and no drain after the window's end: the dispatcher's own timer closes it."""
    h = make(window={"kind": "tumbling", "size": 0.5})
    async with h.outbox:
        h.start()
        await h.dispatcher.put(h.msg(1, {"c": 1.0}))
        await h.until_acked(1)
        h.clock.t = 1000.6  # the window [1000.0, 1000.5) is due; nothing wakes the dispatcher but its timer
        assert [(r.window_start, r.events) for r in await h.until_records()] == [(1000.0, 1)]
        await h.finish()


async def test_a_window_due_sooner_than_the_armed_timer_closes_on_time(make: MakeHarness) -> None:
    """An event-time stream: a late-arriving earlier window is due before the one the timer was armed for."""
    h = make(window={"kind": "tumbling", "size": 0.5}, event_time_field="ts")
    async with h.outbox:
        h.start()
        await h.dispatcher.put(h.msg(1, {"c": 1.0, "ts": 1030.0}))  # due 30 s from now
        await h.until_acked(1)
        await h.dispatcher.put(h.msg(2, {"c": 2.0, "ts": 1000.0}))  # due at once
        await h.until_acked(2)
        h.clock.t = 1000.6
        assert [(r.window_start, r.events) for r in await h.until_records()] == [(1000.0, 1)]
        await h.finish()


async def test_not_settled_while_closed_windows_are_being_committed(make: MakeHarness) -> None:
    """Closed windows leave ``windows`` before their commit returns: ``settled`` must not be true in between."""
    h = make()
    async with h.outbox:
        real_commit = h.outbox.commit
        release = asyncio.Event()
        holding = asyncio.Event()

        async def slow_commit(closed: list[WindowResult], *args: Any, **kwargs: Any) -> None:
            if closed:
                holding.set()
                await release.wait()
            await real_commit(closed, *args, **kwargs)

        h.outbox.commit = slow_commit  # type: ignore[method-assign]
        h.start()
        await h.dispatcher.put(h.msg(1, {"c": 1.0}))
        await h.until_acked(1)
        assert not h.dispatcher.settled  # a window is open
        h.clock.t = 1030.0
        finishing = asyncio.create_task(h.finish())  # the final tick closes the window
        async with asyncio.timeout(5):
            await holding.wait()
        assert len(h.dispatcher.windows) == 0
        assert h.dispatcher.backlog == 0
        assert await h.records() == []
        assert not h.dispatcher.settled
        release.set()
        await asyncio.wait_for(finishing, 5)
        assert h.dispatcher.settled
        assert [r.events for r in await h.records()] == [1]


async def test_a_slow_commit_holds_acknowledgements_not_the_next_batches(make: MakeHarness) -> None:
    """While one commit hangs on the disk, later batches still reach the handler (up to three times the batch
    size uncommitted, counting those at the handler); their events are acknowledged only after they too are
    committed, sharing transactions."""
    h = make(batch_size=2)
    async with h.outbox:
        real_commit = h.outbox.commit
        release = asyncio.Event()
        held = asyncio.Event()
        calls: list[int] = []

        async def slow_commit(closed: list[WindowResult], checkpoints: dict[str, Any], *args: Any) -> int:
            (snap,) = checkpoints.values()
            calls.append(sum(w["events"] for w in snap["windows"]))
            if len(calls) == 1:
                held.set()
                await release.wait()
            return await real_commit(closed, checkpoints, *args)

        h.outbox.commit = slow_commit  # type: ignore[method-assign]
        h.start()
        for i in (1, 2):
            await h.dispatcher.put(h.msg(i, {"c": float(i)}))
        async with asyncio.timeout(5):
            await held.wait()
        for i in range(3, 9):
            await h.dispatcher.put(h.msg(i, {"c": float(i)}))
        async with asyncio.timeout(5):
            while h.dispatcher.counters.processed < 4:
                await asyncio.sleep(0)
        # Loop turns, not time: the fourth batch must stay queued while four events are uncommitted and two are
        # at the handler.
        for _ in range(50):
            await asyncio.sleep(0)
        assert h.dispatcher.counters.processed == 4
        assert h.dispatcher.backlog == 2
        assert h.acked == []
        assert not h.dispatcher.settled
        release.set()
        await h.until_acked(8)
        await h.finish()
        assert h.acked == [1, 2, 3, 4, 5, 6, 7, 8]
        assert calls[0] == 2  # the held commit's checkpoint: the first batch only
        assert calls[-1] == 8
        assert len(calls) < 4  # the three later batches shared transactions
        (snap,) = (await h.outbox.checkpoints()).values()
        assert sum(w["events"] for w in snap["windows"]) == 8
