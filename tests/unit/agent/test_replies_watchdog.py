"""The handler's reply watchdog: a batch is hung when none of its waiting events is answered for the timeout, counted
from the send or from the latest answer, whatever the batch's total time."""

from __future__ import annotations

import asyncio

import orjson

from edge_agent.runtime.replies import PendingReplies

TIMEOUT = 0.2


def _result(rid: int) -> bytes:
    return orjson.dumps({"kind": "result", "id": rid, "values": {"v": rid}}) + b"\n"


def _batch(replies: PendingReplies, n: int) -> list[int]:
    """Send ``n`` events; their request ids."""
    replies.begin(n)
    lines = replies.requests([("t/x", {"v": i}, 0.0) for i in range(n)], list(range(n))).splitlines()
    return [orjson.loads(line)["id"] for line in lines]


async def _hung_within(replies: PendingReplies, deadline: float) -> bool:
    """Wait for progress until the watchdog says hung, or ``deadline`` seconds pass."""
    try:
        async with asyncio.timeout(deadline):
            while not replies.hung:
                replies.progress.clear()
                await replies.progress.wait()
    except TimeoutError:
        return False
    return True


async def test_a_batch_answered_in_a_trickle_is_not_hung_however_long_it_takes() -> None:
    replies = PendingReplies(max_line=1 << 20)
    ids = _batch(replies, 6)
    replies.watch(TIMEOUT)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # One answer every 0.6 x timeout: the batch takes 3 timeouts, no gap reaches one.
    for rid in ids:
        await asyncio.sleep(TIMEOUT * 0.6)
        assert not replies.hung, f"hung {loop.time() - started:.2f}s in, with answers {TIMEOUT * 0.6:g}s apart"
        assert replies.on_line(_result(rid)) == "answered"
    assert not replies.waiting
    assert not replies.hung
    assert loop.time() - started > 3 * TIMEOUT
    replies.stop_watching()


async def test_a_batch_is_hung_one_timeout_after_its_latest_answer() -> None:
    replies = PendingReplies(max_line=1 << 20)
    ids = _batch(replies, 3)
    loop = asyncio.get_running_loop()
    replies.watch(TIMEOUT)
    await asyncio.sleep(TIMEOUT * 0.7)
    replies.on_line(_result(ids[0]))
    answered = loop.time()
    assert await _hung_within(replies, 10 * TIMEOUT), "never hung although two events got no answer"
    waited = loop.time() - answered
    assert waited >= TIMEOUT * 0.95, f"hung {waited:.3f}s after the latest answer, before the {TIMEOUT}s timeout"
    assert replies.charge_oldest("handler-timeout", "no reply") == [2]
    replies.stop_watching()


async def test_the_next_batch_starts_unhung_with_a_fresh_timeout() -> None:
    replies = PendingReplies(max_line=1 << 20)
    _batch(replies, 1)
    replies.watch(TIMEOUT)
    assert await _hung_within(replies, 10 * TIMEOUT)
    replies.take_waiting()
    ids = _batch(replies, 1)
    replies.watch(TIMEOUT)
    assert not replies.hung
    await asyncio.sleep(TIMEOUT * 0.5)
    assert not replies.hung
    replies.on_line(_result(ids[0]))
    assert not replies.waiting
    assert not replies.hung
    replies.stop_watching()
