"""The device broker's hand-off: a backlog goes to the intake a few events at a time, oldest first."""

from __future__ import annotations

import asyncio

from edge_agent.broker.local import HANDOFF, LocalBroker


async def test_a_backlog_is_handed_over_in_bounded_batches_in_order() -> None:
    broker = LocalBroker(host="127.0.0.1", port=1, client_id="handoff", subscriptions=[])
    broker._wake = asyncio.Event()  # what __aenter__ makes, without connecting
    total = 2 * HANDOFF + HANDOFF // 2
    for mid in range(1, total + 1):
        broker._on_message(None, None, _Msg(mid))  # type: ignore[arg-type]
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


class _Msg:
    """What paho hands ``on_message``: the fields the intake reads."""

    def __init__(self, mid: int) -> None:
        self.mid, self.qos, self.dup = mid, 1, False
        self.topic, self.payload = f"sensors/{mid}", b"{}"

