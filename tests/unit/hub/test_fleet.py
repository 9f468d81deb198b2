"""The fleet registry: reported state from ingest into the device views of the API."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.db.store import Store
from hub.desired.publisher import DesiredPublisher
from hub.fleet.devices import Devices
from hub.ingest.consumer import Ingest
from hub.mqtt.broker import Inbound
from hub.mqtt.fake import FakeBus
from tests.unit.hub.conftest import NOW, TOPICS
from tests.unit.hub.factories import reported, status

LOSSES = {"temp": {"expired": 3, "full": 1}, "hum": {"expired": 2}}


@pytest.fixture
def ingest(fleet_store: Store, bus: FakeBus, publisher: DesiredPublisher) -> Ingest:
    return Ingest(fleet_store, bus, TOPICS, clock=lambda: NOW + 100, desired=publisher)


async def deliver(
    ingest: Ingest, device: str, message: Any, *, channel: str = "reported", retain: bool = False
) -> None:
    payload = message if isinstance(message, bytes) else message.model_dump_json().encode()
    await ingest.handle(Inbound(TOPICS.device(device, channel), payload, retain))  # type: ignore[arg-type]


async def device(api: httpx.AsyncClient, device_id: str) -> dict[str, Any]:
    response = await api.get(f"/v1/devices/{device_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_reported_state_fills_the_device_view(ingest: Ingest, control_api: httpx.AsyncClient) -> None:
    await deliver(ingest, "dev-a", reported("dev-a", applied=1, losses=LOSSES, refusal="bad-signature: not ours"))
    detail = await device(control_api, "dev-a")
    assert detail["applied_version"] == 1
    assert detail["desired_version"] == 1  # compiled when the device was first seen
    assert detail["losses_total"] == 6
    assert detail["losses"] == LOSSES
    (handler,) = detail["handlers"]
    assert {k: handler[k] for k in ("name", "image", "healthy", "restarts")} == {
        "name": "temp-c",
        "image": "edgefleet/temp-c:dev",
        "healthy": True,
        "restarts": 2,
    }
    assert detail["subscriptions"]["temp"]["dead_lettered"] == {"late": 1}
    assert (detail["outbox_pending"], detail["alarms"], detail["last_refusal"]) == (4, [], "bad-signature: not ours")
    assert (detail["reported_at"], detail["received_at"], detail["labels"]) == (1600.0, NOW + 100, {"site": "lab"})
    assert detail["last_seen"] == NOW + 100

    listed = {d["id"]: d for d in (await control_api.get("/v1/devices", params={"label": "site=lab"})).json()}
    assert sorted(listed) == ["dev-a", "dev-b"]
    assert (listed["dev-a"]["losses_total"], listed["dev-a"]["applied_version"]) == (6, 1)
    assert "subscriptions" not in listed["dev-a"]  # the list is a summary
    assert (listed["dev-b"]["applied_version"], listed["dev-b"]["handlers"]) == (None, [])
    assert (await control_api.get("/v1/devices/ghost")).status_code == 404


async def test_the_newest_reported_state_wins(ingest: Ingest, control_api: httpx.AsyncClient) -> None:
    await deliver(ingest, "dev-a", reported("dev-a", applied=3, ts=2000.0))
    await deliver(ingest, "dev-a", reported("dev-a", applied=2, ts=1500.0), retain=True)  # an older retained copy
    assert (await device(control_api, "dev-a"))["applied_version"] == 3
    await deliver(ingest, "dev-a", reported("dev-a", applied=4, ts=2500.0, healthy=False))
    detail = await device(control_api, "dev-a")
    assert (detail["applied_version"], detail["alarms"], detail["handlers"][0]["healthy"]) == (
        4,
        ["outbox-write-failed"],
        False,
    )


async def test_a_new_device_is_registered_and_compiled_from_either_message(
    ingest: Ingest, control_api: httpx.AsyncClient, publisher: DesiredPublisher
) -> None:
    await deliver(ingest, "dev-new", reported("dev-new", ts=1700.0), retain=True)
    detail = await device(control_api, "dev-new")
    # A retained report says when the device spoke, not that it is up now; status decides online.
    assert (detail["last_seen"], detail["desired_version"], detail["agent_version"]) == (1700.0, 1, "0.2.0")
    await deliver(ingest, "dev-other", status("dev-other"), channel="status")
    assert publisher.desired.current("dev-other") is not None
    assert (await device(control_api, "dev-other"))["reported_at"] is None


async def test_a_report_for_another_device_or_garbage_is_rejected(
    ingest: Ingest, control_api: httpx.AsyncClient
) -> None:
    await deliver(ingest, "dev-a", reported("dev-b", applied=9))
    await deliver(ingest, "dev-a", b"{not json")
    await deliver(ingest, "dev-a", status("dev-a"), channel="reported")  # wrong kind for the channel
    assert (await device(control_api, "dev-a"))["applied_version"] is None
    assert (await device(control_api, "dev-b"))["applied_version"] is None


async def test_without_a_publisher_ingest_still_records(fleet_store: Store, bus: FakeBus) -> None:
    ingest = Ingest(fleet_store, bus, TOPICS, clock=lambda: NOW)
    await deliver(ingest, "dev-z", reported("dev-z", applied=None))
    assert [d.id for d in Devices(fleet_store).all()][-1] == "dev-z"
    assert bus.published == []
