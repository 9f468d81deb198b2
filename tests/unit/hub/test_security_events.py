"""Security events at the hub: the refusals devices report are stored with their reported state, shown by the
API and `hub device show` (and an expired desired state flagged in the fleet list), exported as a gauge per
reason summed over the fleet; messages ingest refuses because a device speaks for another are counted."""

from __future__ import annotations

import re

import httpx
from prometheus_client import REGISTRY
from rich.console import Console

from edge_protocol.messages import Reported
from hub.api.schemas.fleet import DeviceDetailOut, DeviceOut
from hub.cli.render.fleet import device_detail, devices_table
from hub.db.store import Store
from hub.fleet.registry import Fleet
from hub.ingest.consumer import Ingest
from hub.mqtt.broker import Inbound
from hub.mqtt.fake import FakeBus
from tests.unit.hub.conftest import TOPICS
from tests.unit.hub.factories import batch, record


def gauge(reason: str) -> float:
    return REGISTRY.get_sample_value("edgefleet_hub_device_desired_refusals", {"reason": reason}) or 0.0


def admission(reason: str) -> float:
    return REGISTRY.get_sample_value("edgefleet_hub_admission_refused_total", {"reason": reason}) or 0.0


def report(device: str, ts: float, refusals: dict[str, int], alarms: tuple[str, ...] = ()) -> Reported:
    return Reported(device=device, ts=ts, desired_refusals=refusals, alarms=list(alarms), desired_expires_at=7e9)


def text(renderable: object) -> str:
    console = Console(width=250, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


async def test_reported_refusals_are_stored_shown_and_summed_by_reason(
    fleet_store: Store, control_api: httpx.AsyncClient
) -> None:
    fleet = Fleet(fleet_store)
    before = gauge("expired"), gauge("bad-signature")
    t = 4e9  # later than what other tests of this process reported for these devices (the tally is the process's)
    fleet.record_reported(report("dev-a", t, {"expired": 2}, ("desired-expired",)), seen_at=10.0, received_at=10.0)
    fleet.record_reported(report("dev-b", t, {"expired": 1, "bad-signature": 4}), seen_at=10.0, received_at=10.0)
    fleet.record_reported(report("dev-a", t + 1, {"expired": 3}, ("desired-expired",)), seen_at=11.0, received_at=11.0)
    fleet.record_reported(report("dev-a", t - 1, {"expired": 1}), seen_at=9.0, received_at=9.0)  # a stale replay
    assert (gauge("expired") - before[0], gauge("bad-signature") - before[1]) == (4.0, 4.0)
    # An agent that numbers its reports is ordered by run and number, not by its clock (which may jump back).
    fleet.record_reported(
        report("dev-b", 5.0, {"expired": 1}).model_copy(update={"run": 2, "seq": 1}), seen_at=12.0, received_at=12.0
    )
    fleet.record_reported(
        report("dev-b", t, {"expired": 9}).model_copy(update={"run": 1, "seq": 7}), seen_at=12.0, received_at=12.0
    )
    assert (gauge("expired") - before[0], gauge("bad-signature") - before[1]) == (4.0, 0.0)

    shown = DeviceDetailOut.model_validate((await control_api.get("/v1/devices/dev-a")).json())
    assert shown.desired_refusals == {"expired": 3}
    assert shown.alarms == ["desired-expired"]
    detail = text(device_detail(shown))
    assert re.search(r"desired state refused +expired: 3 *\n", detail)
    assert "desired state EXPIRED" in detail
    listed = [DeviceOut.model_validate(d) for d in (await control_api.get("/v1/devices")).json()]
    lines = {line.split()[0]: line for line in text(devices_table(listed)).splitlines()[1:] if line.strip()}
    assert "EXPIRED" in lines["dev-a"]
    assert "EXPIRED" not in lines["dev-b"]


async def test_ingest_counts_a_device_speaking_for_another_as_a_security_event(fleet_store: Store) -> None:
    ingest = Ingest(fleet_store, FakeBus(), TOPICS, clock=lambda: 5000.0)
    before = admission("device_mismatch"), admission("foreign_window_id")
    foreign = batch("dev-a", record(1, device="dev-a"))
    await ingest.handle(Inbound(TOPICS.aggregates("dev-b"), foreign.model_dump_json().encode(), False))
    stolen = batch("dev-a", record(2, device="dev-b"))
    await ingest.handle(Inbound(TOPICS.aggregates("dev-a"), stolen.model_dump_json().encode(), False))
    assert (admission("device_mismatch") - before[0], admission("foreign_window_id") - before[1]) == (1.0, 1.0)
