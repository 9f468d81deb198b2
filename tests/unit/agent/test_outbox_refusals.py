"""Records the hub refuses (a conflict: their window id is stored with other content) leave the outbox into the
loss ledger, counted once per record, beside records deleted by acks."""

from __future__ import annotations

from pathlib import Path

from edge_agent.outbox import Outbox
from tests.unit.agent.test_outbox import make, result, starts


async def test_a_refused_record_leaves_the_outbox_into_the_loss_ledger(tmp_path: Path) -> None:
    async with make(tmp_path) as box:
        await box.commit([result(1), result(2, sub="hum"), result(3)], {})
        assert await box.refuse([(2, "conflict")]) == 1
        assert box.pending == 2
        assert starts(await box.fetch(0, 10)) == [1.0, 3.0]
        assert await box.losses() == {"hum": {"conflict": 1}}
        assert await box.delete([(1, 3)]) == 2
        assert await box.losses() == {"hum": {"conflict": 1}}  # acked records are no loss


async def test_a_refusal_repeated_or_for_a_record_already_gone_counts_nothing(tmp_path: Path) -> None:
    async with make(tmp_path) as box:
        await box.commit([result(1), result(2)], {})
        await box.delete([(1, 1)])
        assert await box.refuse([(2, "conflict"), (2, "conflict"), (1, "conflict"), (99, "conflict")]) == 1
        assert box.pending == 0
        assert await box.losses() == {"temp": {"conflict": 1}}


async def test_the_ledger_survives_a_reopen(tmp_path: Path) -> None:
    async with make(tmp_path) as box:
        await box.commit([result(1)], {})
        await box.refuse([(1, "conflict")])
    async with Outbox(tmp_path / "box" / "outbox.sqlite") as again:
        assert again.pending == 0
        assert await again.losses() == {"temp": {"conflict": 1}}
