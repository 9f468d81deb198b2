"""The SQLite outbox, for real in tmp_path: order, deletes, TTL, size cap policies, checkpoints, durability."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_agent.errors import OutboxError
from edge_agent.outbox import Outbox
from edge_protocol.aggregate import WindowResult


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def result(n: int, sub: str = "temp") -> WindowResult:
    return WindowResult(
        id=f"dev/{sub}@r//{n}.000/0",
        subscription=sub,
        revision="r",
        window_start=float(n),
        window_end=float(n) + 10,
        events=n,
    )


def starts(rows: list[tuple[int, bytes]]) -> list[float]:
    return [WindowResult.model_validate_json(body).window_start for _, body in rows]


def make(tmp_path: Path, **kw: Any) -> Outbox:
    return Outbox(tmp_path / "box" / "outbox.sqlite", **kw)


async def test_commit_fetch_order_and_delete(tmp_path: Path) -> None:
    async with make(tmp_path) as box:
        assert await box.commit([result(1), result(2)], {}) == 2
        assert box.new_records.is_set()
        assert await box.commit([result(3), result(4), result(5)], {}) == 3
        assert box.pending == 5
        rows = await box.fetch(0, 100)
        seqs = [seq for seq, _ in rows]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 5
        assert starts(rows) == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert starts(await box.fetch(seqs[1], 2)) == [3.0, 4.0]
        assert await box.delete([(seqs[0], seqs[1]), (seqs[3], seqs[3])]) == 3
        assert box.pending == 2
        assert starts(await box.fetch(0, 100)) == [3.0, 5.0]
        assert await box.delete([(seqs[0], seqs[4])]) == 2  # already-deleted seqs are not counted twice
        assert box.pending == 0
        assert await box.fetch(0, 100) == []
        assert await box.integrity_check() == "ok"


async def test_records_round_trip_exactly(tmp_path: Path) -> None:
    async with make(tmp_path) as box:
        r = result(7)
        await box.commit([r], {})
        ((_, body),) = await box.fetch(0, 10)
        assert WindowResult.model_validate_json(body) == r


async def test_ttl_expiry_is_counted(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    async with make(tmp_path, ttl=60.0, clock=clock) as box:
        await box.commit([result(1), result(2, sub="hum")], {})
        clock.t = 1030.0
        await box.commit([result(3)], {})
        clock.t = 1060.0
        assert await box.expire() == 0  # exactly ttl old is kept
        clock.t = 1061.0
        assert await box.expire() == 2
        assert box.pending == 1
        assert starts(await box.fetch(0, 10)) == [3.0]
        assert await box.losses() == {"temp": {"expired": 1}, "hum": {"expired": 1}}
        clock.t = 2000.0
        assert await box.expire() == 1
        assert await box.losses() == {"temp": {"expired": 2}, "hum": {"expired": 1}}
        assert box.pending == 0


async def test_cap_drop_oldest_keeps_newest(tmp_path: Path) -> None:
    async with make(tmp_path, max_records=3, policy="drop-oldest") as box:
        await box.commit([result(1, "a"), result(2, "b")], {})
        assert await box.commit([result(3), result(4), result(5)], {}) == 3
        assert box.pending == 3
        assert starts(await box.fetch(0, 10)) == [3.0, 4.0, 5.0]
        # The ledger charges each drop to the subscription whose record was dropped.
        assert await box.losses() == {"a": {"dropped-full": 1}, "b": {"dropped-full": 1}}


async def test_cap_reject_new(tmp_path: Path) -> None:
    async with make(tmp_path, max_records=2, policy="reject-new") as box:
        assert await box.commit([result(1), result(2), result(3)], {}) == 2
        assert await box.commit([result(4, "hum")], {"hum": {"x": 1}}) == 0
        assert box.pending == 2
        assert starts(await box.fetch(0, 10)) == [1.0, 2.0]
        assert await box.losses() == {"temp": {"rejected-full": 1}, "hum": {"rejected-full": 1}}
        assert await box.checkpoints() == {"hum": {"x": 1}}  # the checkpoint still lands
        seqs = [s for s, _ in await box.fetch(0, 10)]
        await box.delete([(seqs[0], seqs[0])])
        assert await box.commit([result(5)], {}) == 1


async def test_checkpoints_replaced_per_subscription(tmp_path: Path) -> None:
    async with make(tmp_path) as box:
        assert await box.checkpoints() == {}
        await box.commit([], {"temp": {"revision": "r1", "windows": []}, "hum": {"n": 1}})
        assert not box.new_records.is_set()  # a checkpoint alone is no news for the uplink
        await box.commit([result(1)], {"temp": {"revision": "r2", "windows": [1]}})
        assert await box.checkpoints() == {"temp": {"revision": "r2", "windows": [1]}, "hum": {"n": 1}}


async def test_reopen_keeps_records_checkpoints_and_losses(tmp_path: Path) -> None:
    async with make(tmp_path, max_records=2) as box:
        await box.commit([result(1), result(2), result(3)], {"temp": {"open": [1, 2]}})
        first_rows = await box.fetch(0, 10)
    async with make(tmp_path, max_records=2) as again:
        assert again.pending == 2
        assert await again.fetch(0, 10) == first_rows
        assert await again.checkpoints() == {"temp": {"open": [1, 2]}}
        assert await again.losses() == {"temp": {"dropped-full": 1}}
        await again.commit([result(4)], {})
        seqs = [s for s, _ in await again.fetch(0, 10)]
        assert seqs[-1] > first_rows[-1][0]  # sequences keep growing across restarts
        assert await again.integrity_check() == "ok"


async def test_state_machine(tmp_path: Path) -> None:
    box = make(tmp_path)
    async with box:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await box.__aenter__()
    with pytest.raises(OutboxError, match="closed"):
        await box.fetch(0, 1)
    await box.aclose()  # idempotent
    fresh = make(tmp_path)
    with pytest.raises(OutboxError, match="not open"):
        await fresh.fetch(0, 1)
    await fresh.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await fresh.__aenter__()


async def test_checkpoint_bytes_are_json(tmp_path: Path) -> None:
    # The dispatcher test reads checkpoints straight from SQLite; keep that format pinned here.
    async with make(tmp_path) as box:
        await box.commit([], {"temp": {"revision": "r"}})
        with sqlite3.connect(box.path) as db:
            (state,) = db.execute("SELECT state FROM checkpoints WHERE subscription='temp'").fetchone()
        assert orjson.loads(state) == {"revision": "r"}
