"""A conflict on a real broker: the agent's outbox and uplink, the in-process hub, a window id reused with other
content. The hub refuses it (not acked as stored) and counts it, the agent gives it up into its loss ledger
under ``conflict`` and stops resending it; a plain redelivery is still acked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from edge_agent.broker import CloudBroker
from edge_agent.outbox import Outbox
from edge_agent.uplink import Uplink, status_payload
from edge_protocol.aggregate import FieldAccumulator, WindowResult, window_id
from edge_protocol.topics import Topics
from scripts.mosquitto import Mosquitto
from tests.support.readers import hub_device, hub_rows
from tests.support.running import cancel_and_wait, running_hub, wait_for

pytestmark = pytest.mark.integration

START = 1_700_000_000.0


def window(device: str, values: tuple[float, ...], *, start: float = START) -> WindowResult:
    acc = FieldAccumulator()
    for i, value in enumerate(values):
        acc.add(value, start + i)
    return WindowResult(
        id=window_id(device, "temps", "rev1", "s0", start),
        subscription="temps",
        revision="rev1",
        group="s0",
        window_start=start,
        window_end=start + 10.0,
        events=len(values),
        fields={"c": acc.freeze()},
        stats=["count", "sum"],
    )


def conflicts() -> float:
    return REGISTRY.get_sample_value("edgefleet_hub_records_refused_total", {"reason": "conflict"}) or 0.0


@contextlib.asynccontextmanager
async def running_uplink(
    cloud: Mosquitto, prefix: str, device: str, path: Path
) -> AsyncIterator[tuple[Uplink, Outbox]]:
    """The agent's outbox and uplink (its real cloud session), without intake or handlers."""
    topics = Topics(prefix)
    broker = CloudBroker(
        host=cloud.host,
        port=cloud.port,
        client_id=f"agent-{device}-uplink",
        will=(topics.status(device), status_payload(device, False)),
        reconnect_max=1.0,
    )
    async with Outbox(path) as outbox:
        uplink = Uplink(cloud=broker, outbox=outbox, device_id=device, topics=topics, resend_after=1.0)
        task = asyncio.create_task(uplink.run(), name="test.uplink")
        try:
            yield uplink, outbox
        finally:
            await cancel_and_wait(task, what="the uplink")


async def test_a_conflicting_window_is_refused_counted_and_in_the_loss_ledger(
    cloud_broker: Mosquitto, topic_prefix: str, tmp_path: Path
) -> None:
    device = "dev-conflict"
    first, same, other = window(device, (1.0, 2.0)), window(device, (1.0, 2.0)), window(device, (5.0, 6.0, 7.0))
    assert first.id == other.id
    before = conflicts()
    db = tmp_path / "hub.db"
    async with (
        running_hub(cloud_broker, topic_prefix, db) as (api, _hub),
        running_uplink(cloud_broker, topic_prefix, device, tmp_path / "outbox.sqlite") as (uplink, outbox),
    ):
        await outbox.commit([first], {})
        await wait_for(lambda: outbox.pending == 0, timeout=30, what="the first window acked")
        await outbox.commit([same], {})  # a redelivery under a new sequence: acked as stored, no loss
        await wait_for(lambda: uplink.acked == 2, timeout=30, what="the redelivery acked")
        assert await outbox.losses() == {}

        await outbox.commit([other], {})
        await wait_for(lambda: outbox.pending == 0, timeout=30, what="the conflicting record given up")
        assert uplink.acked == 2, "a conflict must not be acked as stored"
        assert uplink.refused == 1
        assert await outbox.losses() == {"temps": {"conflict": 1}}
        assert conflicts() == before + 1

        shown = await hub_device(api, device)
        assert shown["refused"] == {"conflict": 1}
        (row,) = hub_rows(db, device)
        assert row["events"] == first.events, "the stored window keeps its first content"
        assert row["fields"]["c"]["sum"] == first.fields["c"].sum
        # Given up, so never resent (the outbox no longer holds it); later windows flow as before.
        sent = uplink.sent
        await outbox.commit([window(device, (3.0,), start=START + 10.0)], {})
        await wait_for(lambda: outbox.pending == 0 and uplink.acked == 3, timeout=30, what="a later window acked")
        assert uplink.sent == sent + 1
        assert conflicts() == before + 1
