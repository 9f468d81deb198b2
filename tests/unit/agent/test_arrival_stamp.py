"""Arrival times: one reading of the steady wall clock per socket read, shared by the events it decodes."""

from __future__ import annotations

import itertools

import pytest

from edge_agent.broker import local
from edge_agent.broker.local import LocalBroker


class _Msg:
    def __init__(self, mid: int) -> None:
        self.mid, self.qos, self.dup = mid, 1, False
        self.topic, self.payload = f"sensors/{mid}", b"{}"


def test_events_of_one_read_share_its_arrival_time(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(100)
    monkeypatch.setattr(local, "_now", lambda: float(next(ticks)))
    broker = LocalBroker(host="127.0.0.1", port=1, client_id="stamp", subscriptions=[])
    wakes: list[int] = []

    class _Wake:
        def set(self) -> None:
            wakes.append(1)

    broker._wake = _Wake()  # type: ignore[assignment]
    for read in ((1, 2, 3), (4, 5)):
        broker._stamp_read()  # what the socket driver calls before each read
        for mid in read:
            broker._on_message(None, None, _Msg(mid))  # type: ignore[arg-type]
    arrived = [(m.mid, m.arrived) for m in broker._buffer]
    first, second = arrived[0][1], arrived[3][1]
    assert second > first
    assert arrived == [(1, first), (2, first), (3, first), (4, second), (5, second)]
