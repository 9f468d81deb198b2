"""The cloud link cut and restored five times while events flow: store and forward across every cut.

The agent reaches the cloud broker through a `LinkProxy` that the test takes down (every connection closed, new
ones refused) and brings back; the hub sits on the broker directly (in-process). The device side never stops: events
are published throughout, and the stream ends only after the last restore. Each outage lasts 2 s by default, 20 s
with ``--soak``.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import Outages
from tests.support.agent_config import QUICK_CLOUD
from tests.support.link_proxy import LinkProxy
from tests.support.mqtt_clients import PacedPublisher, publish_all
from tests.support.readers import Totals, assert_events_per_group, hub_rows, reported_since
from tests.support.rig import Rig
from tests.support.running import running_agent, running_hub, wait_for
from tests.support.workloads import SENTINEL_GROUP, TEMP_C, sentinel_event, temperature_events, temps_subscription

pytestmark = pytest.mark.integration

CUTS = 5
RATE = 300.0  # events per second, throughout


async def test_link_cut_and_restored_five_times(
    fresh_broker: Any,
    handler_images: dict[str, str],
    docker_client: Any,
    tmp_path: Path,
    outages: Outages,
    rig: Rig,
) -> None:
    cloud = fresh_broker()
    down = outages.pick(2, 20)
    # More than the stream needs: it is ended (PacedPublisher.finish) once the link is back for good.
    messages, celsius = temperature_events(rig.prefix, int(RATE * CUTS * (down + 15)), seed=51)
    db = tmp_path / "hub.db"

    def sensor_rows() -> list[dict[str, Any]]:
        return [r for r in hub_rows(db, rig.device_id) if r["group"] != SENTINEL_GROUP]

    async with LinkProxy(cloud) as link:
        config = rig.agent_config(
            cloud_port=link.port,  # the agent's cloud link goes through the proxy
            handlers=[TEMP_C],
            subscriptions=[temps_subscription(rig.prefix)],
            cloud_extra={**QUICK_CLOUD, "report_interval": "1s"},
        )
        async with (
            running_hub(cloud, rig.prefix, db) as (api, hub_task),
            running_agent(config) as (state, agent_task),
        ):
            dispatcher = state.dispatchers["temps"]
            assert state.outbox is not None
            assert state.uplink is not None
            outbox, uplink = state.outbox, state.uplink

            def progress() -> str:
                return (f"{state.counters()} pending={outbox.pending} sent={uplink.sent} acked={uplink.acked} "
                        f"resends={uplink.resends} proxy connections={link.connections}; "
                        f"hub: {Totals(sensor_rows())}")

            pending_while_down: list[int] = []
            with PacedPublisher(rig.broker, messages, RATE) as publisher:
                for cut in range(CUTS + 1):
                    # The link carries windows again (windows closed since it came back reach the hub).
                    stored = Totals(sensor_rows()).events
                    await wait_for(lambda stored=stored: Totals(sensor_rows()).events > stored, timeout=30,
                                   what=f"windows stored over the link (cycle {cut + 1})", detail=progress)
                    if cut == CUTS:
                        break
                    await link.sever()
                    processed = dispatcher.counters.processed
                    await asyncio.sleep(down)
                    assert dispatcher.counters.processed > processed, "events must flow while the link is down"
                    pending_while_down.append(outbox.pending)
                    await link.restore()
                published = await asyncio.to_thread(publisher.finish)
                assert publisher.error is None
            await asyncio.to_thread(publish_all, rig.broker, [sentinel_event(rig.prefix)])
            await wait_for(
                lambda: any(r["group"] == SENTINEL_GROUP for r in hub_rows(db, rig.device_id)),
                timeout=60,
                what="the sentinel's window stored (so every earlier window was committed)",
                detail=progress,
            )
            await wait_for(lambda: outbox.pending == 0, timeout=60, what="the outbox emptied by the hub's acks",
                           detail=progress)
            drained_at = time.time()
            shown: dict[str, Any] = {}

            async def reported_drained() -> bool:
                nonlocal shown
                shown = await reported_since(api, rig.device_id, drained_at)
                return bool(shown) and shown["outbox_pending"] == 0

            await wait_for(reported_drained, timeout=30, what="the drained outbox reported to the hub")

            totals = Totals(sensor_rows(), "c")
            losses = await outbox.losses()
            sent_celsius = celsius[:published]
            print(f"\nlink cut x{CUTS} ({down:g}s each): published={published} stored={totals.events} "
                  f"windows={totals.rows} outbox pending at each restore={pending_while_down} "
                  f"proxy connections={link.connections} sent={uplink.sent} resends={uplink.resends} "
                  f"reported drops={losses}")
            assert_events_per_group(sensor_rows(), messages[:published], sent_celsius)  # none twice, none lost
            assert losses == {}, "the agent dropped records although its outbox had room"
            assert shown["losses"] == {}
            assert totals.events == published, f"stored {totals.events} of {published} events"
            assert totals.count == published
            assert math.isclose(totals.sum, math.fsum(sent_celsius), rel_tol=1e-9, abs_tol=1e-6)
            assert all(n > 0 for n in pending_while_down), "windows must wait in the outbox while the link is down"
            assert link.connections >= CUTS + 1, "the agent must have reconnected after every cut"
            assert dispatcher.counters.processed == published + 1  # and the sentinel
            assert not dispatcher.counters.dead_lettered
            assert not agent_task.done()
            assert not hub_task.done()
