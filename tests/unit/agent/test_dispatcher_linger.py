"""Batches of a trickling stream: what a short batch waits for before it goes to the handler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.agent.dispatcher_harness import BatchRecordingRuntime, Harness, MakeHarness, harnesses


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    async with harnesses(tmp_path) as build:
        yield build


def batches(h: Harness) -> list[int]:
    runtime = h.dispatcher.runtime
    assert isinstance(runtime, BatchRecordingRuntime)
    return runtime.batches


async def put_one_per_turn(h: Harness, mids: range) -> None:
    """Events that trickle in: one per loop turn, as a paced stream's reads hand them over."""
    for mid in mids:
        await h.dispatcher.put(h.msg(mid, {"c": float(mid)}))
        await asyncio.sleep(0)


async def trickled(h: Harness, count: int) -> list[int]:
    """The batches of ``count`` events put one per loop turn, once all are acknowledged and the dispatcher drained."""
    async with h.outbox:
        h.start()
        await put_one_per_turn(h, range(1, count + 1))
        await h.until_acked(count)
        await h.finish()
    return batches(h)


async def test_a_trickle_lingers_into_one_batch(make: MakeHarness) -> None:
    # Real seconds: the injected clock stands still, so the first event waits it all.
    assert await trickled(make(linger=1.0), 5) == [5]


async def test_without_linger_a_batch_waits_one_loop_turn(make: MakeHarness) -> None:
    """Each event comes one turn after the last: a batch is the event queued and the one read in its turn."""
    assert await trickled(make(linger=0.0), 5) == [2, 2, 1]


async def test_a_full_batch_does_not_linger(make: MakeHarness) -> None:
    h = make(linger=60.0, batch_size=3)  # until_acked's 5 s deadline fails the test if the batch waited
    async with h.outbox:
        h.start()
        await put_one_per_turn(h, range(1, 4))
        await h.until_acked(3)
        assert batches(h) == [3]
        await h.finish()


async def test_an_event_that_waited_its_linger_goes_at_once(make: MakeHarness) -> None:
    h = make(linger=60.0)
    async with h.outbox:
        h.start()
        msg = h.msg(1, {"c": 1.0})
        h.clock.t += 60.0  # it arrived a linger ago (it queued behind a slow batch)
        await h.dispatcher.put(msg)
        await h.until_acked(1)
        await h.finish()
    assert batches(h) == [1]


async def test_drain_ends_a_linger(make: MakeHarness) -> None:
    h = make(linger=60.0)
    async with h.outbox:
        h.start()
        await put_one_per_turn(h, range(1, 3))
        async with asyncio.timeout(5):
            await h.finish()
    assert batches(h) == [2]
    assert sorted(h.acked) == [1, 2]
