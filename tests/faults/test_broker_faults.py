"""Broker faults: the cloud broker SIGKILLed (store and forward), the device broker restarted (reconnect, resume).

The cloud broker stays down while 10,000 events arrive: for as long as they take to publish and process by default,
60 s with ``--soak`` (the events then paced over the whole outage).
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
from tests.support.mqtt_clients import PacedPublisher, publish_all
from tests.support.readers import Totals, assert_events_per_group, hub_device, hub_rows, reported_since
from tests.support.rig import Rig
from tests.support.running import running_agent, running_hub, wait_for
from tests.support.workloads import TEMP_C, temperature_events, temps_subscription

pytestmark = pytest.mark.integration


async def test_cloud_broker_sigkill_store_and_forward(
    fresh_broker: Any,
    handler_images: dict[str, str],
    docker_client: Any,
    tmp_path: Path,
    outages: Outages,
    rig: Rig,
) -> None:
    cloud = fresh_broker()
    outage = outages.pick(0, 60)
    before, celsius_before = temperature_events(rig.prefix, 1_000, seed=31)
    during, celsius_during = temperature_events(rig.prefix, 10_000, seed=32)
    celsius = celsius_before + celsius_during
    db = tmp_path / "hub.db"
    config = rig.agent_config(
        cloud_port=cloud.port,
        cloud_extra=QUICK_CLOUD,
        handlers=[TEMP_C],
        subscriptions=[temps_subscription(rig.prefix)],
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
            return f"{state.counters()} pending={outbox.pending}; hub: {Totals(hub_rows(db, rig.device_id))}"

        def all_committed(n: int) -> bool:
            return dispatcher.counters.processed >= n and dispatcher.settled

        await asyncio.to_thread(publish_all, rig.broker, before)
        await wait_for(lambda: all_committed(len(before)) and outbox.pending == 0, timeout=30,
                       what="the first events stored", detail=progress)
        assert Totals(hub_rows(db, rig.device_id)).events == len(before)

        cloud.kill()
        down_since = time.monotonic()
        if outage:
            with PacedPublisher(rig.broker, during, rate=len(during) / outage) as publisher:
                await wait_for(publisher.done.is_set, timeout=outage + 60, what="events published during the outage")
                assert publisher.error is None
        else:
            await asyncio.to_thread(publish_all, rig.broker, during)
        await wait_for(lambda: all_committed(len(celsius)), timeout=60, what="events processed while the cloud is down",
                       detail=progress)
        pending_while_down = outbox.pending
        assert pending_while_down > 0, "closed windows must wait in the outbox while the cloud broker is down"
        assert Totals(hub_rows(db, rig.device_id)).events == len(before)
        assert not agent_task.done()

        await asyncio.sleep(max(0.0, down_since + outage - time.monotonic()))
        down_for = time.monotonic() - down_since
        await asyncio.to_thread(cloud.restart)
        await wait_for(lambda: outbox.pending == 0, timeout=60, what="the outbox drained after the broker restart",
                       detail=progress)
        totals = Totals(hub_rows(db, rig.device_id), "c")
        losses = await outbox.losses()
        drained_at = time.time()
        uplink.report_soon()  # the hub shows the device's ledger (and its empty outbox) from its reported state
        await wait_for(lambda: _reported_drained(api, rig.device_id, drained_at), timeout=30,
                       what="the drained outbox reported to the hub")
        print(f"\ncloud broker kill -9: published={len(celsius)} ({len(during)} while down {down_for:.1f}s) "
              f"stored={totals.events} windows={totals.rows} outbox pending while down={pending_while_down} "
              f"reported drops={losses}")
        assert_events_per_group(hub_rows(db, rig.device_id), before + during, celsius)  # none twice, none lost
        assert totals.events == len(celsius), f"stored {totals.events} of {len(celsius)} events"
        assert totals.count == len(celsius)
        assert math.isclose(totals.sum, math.fsum(celsius), rel_tol=1e-9, abs_tol=1e-6)
        assert losses == {}, "the agent dropped records although its outbox had room"
        assert (await hub_device(api, rig.device_id))["losses"] == {}
        assert not agent_task.done()
        assert not hub_task.done()


@pytest.mark.parametrize("how", ["restart", "sigkill"])
async def test_device_broker_restart_agent_resumes(
    fresh_broker: Any,
    handler_images: dict[str, str],
    docker_client: Any,
    tmp_path: Path,
    how: str,
    rig: Rig,
) -> None:
    device = fresh_broker()
    first, celsius_first = temperature_events(rig.prefix, 500, seed=41)
    second, celsius_second = temperature_events(rig.prefix, 500, seed=42)
    config = rig.with_broker(device).agent_config(
        handlers=[TEMP_C],
        subscriptions=[temps_subscription(rig.prefix)],
    )
    async with running_agent(config) as (state, agent_task):
        dispatcher = state.dispatchers["temps"]
        assert state.intake is not None
        assert state.outbox is not None
        intake, outbox = state.intake, state.outbox

        await asyncio.to_thread(publish_all, device, first)
        await wait_for(lambda: dispatcher.counters.processed >= len(first), timeout=30, what="first events processed",
                       detail=state.counters)
        connects = intake.connects
        if how == "sigkill":
            device.kill()
            await asyncio.to_thread(device.start)
        else:
            await asyncio.to_thread(device.restart)
        await wait_for(lambda: intake.connects > connects, timeout=30, what="the agent reconnected")
        await asyncio.to_thread(publish_all, device, second)
        total = len(first) + len(second)
        await wait_for(
            lambda: dispatcher.counters.processed >= total and dispatcher.settled,
            timeout=30,
            what="events published after the restart processed",
            detail=state.counters,
        )
        results = [r for _seq, r in await _outbox_results(outbox)]
        print(f"\ndevice broker {how}: published={total} processed={dispatcher.counters.processed} "
              f"in closed windows={sum(r['events'] for r in results)} connects={intake.connects}")
        assert dispatcher.counters.processed == total
        assert sum(r["events"] for r in results) == total
        c_sum = math.fsum(r["fields"]["c"]["sum"] for r in results)
        assert math.isclose(c_sum, math.fsum(celsius_first + celsius_second), rel_tol=1e-9, abs_tol=1e-6)
        assert not dispatcher.counters.dead_lettered
        assert not agent_task.done()


async def _reported_drained(api: Any, device_id: str, since: float) -> bool:
    shown = await reported_since(api, device_id, since)
    return bool(shown) and shown["outbox_pending"] == 0


async def _outbox_results(outbox: Any) -> list[tuple[int, dict[str, Any]]]:
    import orjson

    return [(seq, orjson.loads(body)) for seq, body in await outbox.fetch(0, 100_000)]
