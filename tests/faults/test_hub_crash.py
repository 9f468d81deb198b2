"""The hub process SIGKILLed while the agent forwards: after a restart nothing is lost and nothing stored twice."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_config import QUICK_CLOUD
from tests.support.daemons import hub_process
from tests.support.mqtt_clients import PacedPublisher, sent_windows
from tests.support.readers import (
    Totals,
    assert_events_per_group,
    assert_stored_as_held,
    hub_rows,
    integrity_check,
)
from tests.support.rig import Rig
from tests.support.running import running_agent, wait_for
from tests.support.workloads import TEMP_C, temperature_events, temps_subscription

pytestmark = pytest.mark.integration


async def test_hub_sigkill_while_agent_forwards(
    fresh_broker: Any,
    handler_images: dict[str, str],
    docker_client: Any,
    tmp_path: Path,
    rig: Rig,
) -> None:
    cloud = fresh_broker()
    messages, celsius = temperature_events(rig.prefix, 3_000, seed=2)
    config = rig.agent_config(
        cloud_port=cloud.port,
        cloud_extra=QUICK_CLOUD,
        handlers=[TEMP_C],
        subscriptions=[temps_subscription(rig.prefix)],
    )
    with (
        hub_process(cloud, rig.prefix, tmp_path / "hub") as (hub, db, _url),
        sent_windows(cloud, rig.prefix, rig.device_id) as sent,
    ):
        await hub.start()
        async with running_agent(config) as (state, agent_task):
            dispatcher = state.dispatchers["temps"]
            assert state.uplink is not None
            assert state.outbox is not None
            uplink, outbox = state.uplink, state.outbox

            def settled() -> bool:
                return dispatcher.counters.processed >= len(celsius) and dispatcher.settled and outbox.pending == 0

            def progress() -> str:
                return (f"{state.counters()} pending={outbox.pending} sent={uplink.sent} acked={uplink.acked} "
                        f"resends={uplink.resends}; hub: {Totals(hub_rows(db, rig.device_id))}")

            with PacedPublisher(rig.broker, messages, rate=600.0) as publisher:
                await wait_for(lambda: bool(hub_rows(db, rig.device_id)), timeout=30, what="first windows stored",
                               detail=progress)
                assert not publisher.done.is_set(), "the hub must be killed while events still flow"
                hub.kill()
                stored_at_kill = Totals(hub_rows(db, rig.device_id))
                sent_at_kill = uplink.sent
                # The agent goes on forwarding into the void (the hub keeps no broker session): those batches
                # must come back through resends, not be deleted on a broker PUBACK.
                await wait_for(lambda: uplink.sent > sent_at_kill, timeout=30,
                               what="the agent forwarding while the hub is down", detail=progress)
                assert integrity_check(db) == "ok"
                assert Totals(hub_rows(db, rig.device_id)).events == stored_at_kill.events
                await hub.start()
                await wait_for(publisher.done.is_set, timeout=60, what="every event published")
            await wait_for(settled, timeout=60, what="every window stored and acknowledged", detail=progress)

            totals = Totals(hub_rows(db, rig.device_id), "c")
            print(f"\nhub kill -9: published={len(celsius)} stored={totals.events} windows={totals.rows} "
                  f"(stored at kill: {stored_at_kill.events}); agent sent={uplink.sent} resends={uplink.resends}")
            rows = hub_rows(db, rig.device_id)
            assert_events_per_group(rows, messages, celsius)  # none stored twice (under any id), none dropped
            assert_stored_as_held(rows, sent.received())  # each stored window is, value for value, one the agent sent
            assert totals.events == len(celsius), f"stored {totals.events} of {len(celsius)} events"
            assert totals.count == len(celsius)
            assert math.isclose(totals.sum, math.fsum(celsius), rel_tol=1e-9, abs_tol=1e-6)
            assert dispatcher.counters.processed == len(celsius)
            assert not dispatcher.counters.dead_lettered
            assert await outbox.losses() == {}
            assert uplink.resends >= 1, "the batches lost with the hub must have been sent again"
            assert not agent_task.done()
            assert hub.running, hub.tail()
