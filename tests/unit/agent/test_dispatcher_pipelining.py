"""Two batches at the handler: with a backlog, the next batch is handed over before the last one's outcomes are
applied, so that the handler works on it meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge_agent.runtime.base import EventTuple, Outcome
from tests.unit.agent.dispatcher_harness import BatchRecordingRuntime, Harness, MakeHarness, handler, harnesses


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    async with harnesses(tmp_path) as build:
        yield build


class GatedRuntime(BatchRecordingRuntime):
    """Takes every batch at once and gives its outcomes only when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__("h", handler)
        self.gate = asyncio.Event()
        self.cancelled = 0

    async def _process(self, events: list[EventTuple], keys: list[str] | None) -> list[Outcome]:
        self.batches.append(len(events))
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await super(BatchRecordingRuntime, self)._process(events, keys)


async def until(condition: Callable[[], bool], turns: int = 200) -> None:
    """Loop turns, not time: the dispatcher gets there without waiting on anything outside the loop."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached within the loop turns")


async def two_batches_at_the_handler(h: Harness, runtime: GatedRuntime, count: int) -> None:
    """Queue ``count`` events, start the dispatcher and wait until the gated runtime holds two batches."""
    for i in range(1, count + 1):
        await h.dispatcher.put(h.msg(i, {"c": float(i)}))
    h.start()
    await until(lambda: len(runtime.batches) == 2)


async def test_with_a_backlog_the_next_batch_goes_before_the_outcomes_of_the_last(make: MakeHarness) -> None:
    h = make(batch_size=2)
    runtime = GatedRuntime()
    h.dispatcher.switch_runtime(runtime)
    async with h.outbox:
        await two_batches_at_the_handler(h, runtime, 6)
        for _ in range(20):
            await asyncio.sleep(0)
        assert runtime.batches == [2, 2]  # not a third: two batches at the handler at most
        assert h.dispatcher.counters.processed == 0
        assert h.dispatcher.backlog == 2
        runtime.gate.set()
        await h.until_acked(6)
        await h.finish()
    assert h.acked == [1, 2, 3, 4, 5, 6]
    assert runtime.batches == [2, 2, 2]
    assert h.dispatcher.counters.processed == 6


async def test_windows_do_not_close_past_a_batch_still_at_the_handler(make: MakeHarness) -> None:
    """The first batch's outcomes are applied while the second is at the handler: the window its events belong to
    must stay open, though the clock has passed its end."""
    h = make(batch_size=2)  # tumbling 10 s windows on arrival time
    async with h.outbox:
        h.clock.t = 1005.0
        for i in (1, 2):
            await h.dispatcher.put(h.msg(i, {"c": 1.0}))
        h.clock.t = 1009.9
        for i in (3, 4):
            await h.dispatcher.put(h.msg(i, {"c": 1.0}))
        h.clock.t = 1012.0
        await h.finish()
        (window,) = await h.records()
    assert h.publish.deadletters() == []
    assert (window.window_start, window.events) == (1000.0, 4)


async def test_cancelled_with_two_batches_at_the_handler_leaves_both_unacknowledged(make: MakeHarness) -> None:
    h = make(batch_size=2)
    runtime = GatedRuntime()
    h.dispatcher.switch_runtime(runtime)
    async with h.outbox:
        await two_batches_at_the_handler(h, runtime, 4)
        assert h.task is not None
        h.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await h.task
        await until(lambda: runtime.cancelled == 2)
    assert h.acked == []
    assert h.dispatcher.counters.processed == 0
