"""The device broker's hand-off: a backlog goes to the intake a few events at a time, oldest first, and reading
stays paused while the hand-off list is full."""

from __future__ import annotations

import asyncio

from edge_agent.broker.local import HANDOFF, LocalBroker


class _Msg:
    """What paho hands ``on_message``: the fields the intake reads."""

    def __init__(self, mid: int) -> None:
        self.mid, self.qos, self.dup = mid, 1, False
        self.topic, self.payload = f"sensors/{mid}", b"{}"


class _Reading:
    """Stands in for the socket driver: whether the broker's socket would be read."""

    def __init__(self) -> None:
        self.on = True

    def pause_reading(self) -> None:
        self.on = False

    def resume_reading(self) -> None:
        self.on = True


def _broker(max_buffered: int) -> tuple[LocalBroker, _Reading]:
    broker = LocalBroker(host="127.0.0.1", port=1, client_id="handoff", subscriptions=[], max_buffered=max_buffered)
    broker._wake = asyncio.Event()  # what __aenter__ makes, without connecting
    reading = _Reading()
    broker._driver = reading  # type: ignore[assignment]
    return broker, reading


def _arrive(broker: LocalBroker, first: int, count: int) -> None:
    for mid in range(first, first + count):
        broker._on_message(None, None, _Msg(mid))  # type: ignore[arg-type]


async def test_a_backlog_is_handed_over_in_bounded_batches_in_order() -> None:
    broker, _ = _broker(max_buffered=5_000)
    total = 2 * HANDOFF + HANDOFF // 2
    _arrive(broker, 1, total)
    sizes: list[int] = []
    mids: list[int] = []
    async with asyncio.timeout(5):
        async for batch in broker.batches():
            sizes.append(len(batch))
            mids += [m.mid for m in batch]
            if len(mids) == total:
                break
    assert sizes == [HANDOFF, HANDOFF, HANDOFF // 2]
    assert mids == list(range(1, total + 1))
    assert not broker._wake.is_set()  # nothing left: the next batch waits for the next event


async def test_reading_resumes_only_once_the_list_has_room() -> None:
    """A hand-off that leaves the list at its bound must not resume reading: each resumed read adds a socket
    chunk (hundreds of events) while a hand-off takes only ``HANDOFF``, so the list would grow without bound."""
    limit = 3 * HANDOFF
    broker, reading = _broker(max_buffered=limit)
    _arrive(broker, 1, limit + HANDOFF)  # one read decodes its whole chunk, past the bound
    assert not reading.on
    handed = broker.batches()
    async with asyncio.timeout(5):
        await anext(handed)  # the list is still at the bound
        assert not reading.on
        await anext(handed)  # now below it
        assert reading.on
    await handed.aclose()
