"""Desired state: who gets what, versions that only move on change and never back, signatures, publishing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from edge_protocol.desired import DesiredDocument, DesiredRefused, SignedDesired, verify_document
from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from hub.db.store import Store
from hub.desired.catalog import Catalog, Snapshot, read_snapshot
from hub.desired.documents import KEEP_VERSIONS, DesiredStore
from hub.desired.publisher import DesiredPublisher
from hub.fleet.labels import Selector
from hub.mqtt.fake import FakeBus
from tests.support.postgres_db import database_url
from tests.unit.hub.conftest import NOW, TOPICS

TEMP = HandlerSpec(name="temp-c", image="edgefleet/temp-c:1")
HUM = HandlerSpec(name="hum", image="edgefleet/hum:1")


def sub(name: str, handler: str = "temp-c", topic: str = "sensors/+/t") -> SubscriptionSpec:
    return SubscriptionSpec(name=name, topic=topic, handler=handler)


def document(desired: DesiredStore, device: str) -> DesiredDocument:
    record = desired.current(device)
    assert record is not None
    return record.document


def names(doc: DesiredDocument) -> tuple[list[str], list[str]]:
    return [h.name for h in doc.handlers], [s.name for s in doc.subscriptions]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite, and a fresh PostgreSQL database when EDGEFLEET_TEST_POSTGRES_URL is set."""
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def catalog(fleet_store: Store) -> Catalog:
    catalog = Catalog(fleet_store, clock=lambda: NOW)
    catalog.put_handler(TEMP, replace=False)
    catalog.put_handler(HUM, replace=False)
    return catalog


@pytest.fixture
def desired(fleet_store: Store, signing_key: Ed25519PrivateKey) -> DesiredStore:
    return DesiredStore(fleet_store, signing_key, clock=lambda: NOW)


def test_only_matching_devices_get_a_subscription_and_only_the_handlers_it_uses(
    catalog: Catalog, desired: DesiredStore, signing_key: Ed25519PrivateKey
) -> None:
    catalog.put_subscription(sub("lab-temp"), Selector.parse(["site=lab"]), replace=False)
    catalog.put_subscription(sub("edge-hum", "hum"), Selector.parse(["site=lab", "tier=edge"]), replace=False)
    catalog.put_subscription(sub("all-temp", topic="all/#"), Selector(), replace=False)
    made = desired.recompile()
    assert [(v.device, v.version, v.changed) for v in made] == [(d, 1, True) for d in ("dev-a", "dev-b", "dev-c")]
    assert names(document(desired, "dev-a")) == (["temp-c"], ["all-temp", "lab-temp"])
    assert names(document(desired, "dev-b")) == (["hum", "temp-c"], ["all-temp", "edge-hum", "lab-temp"])
    assert names(document(desired, "dev-c")) == (["temp-c"], ["all-temp"])
    assert document(desired, "dev-b").handlers[0] == HUM  # the spec as stored

    for device in ("dev-a", "dev-b", "dev-c"):
        record = desired.current(device)
        assert record is not None
        verified = verify_document(record.envelope.encode(), signing_key.public_key(), device)
        assert verified == record.document
        assert (verified.device, verified.version, verified.issued_at) == (device, 1, NOW)
        with pytest.raises(DesiredRefused, match="wrong-device"):
            verify_document(record.envelope.encode(), signing_key.public_key(), "dev-x")
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(DesiredRefused, match="bad-signature"):
        verify_document(desired.current("dev-a").envelope.encode(), other, "dev-a")  # type: ignore[union-attr]


def test_a_device_without_subscriptions_gets_an_empty_document(desired: DesiredStore) -> None:
    desired.recompile(["dev-a", "ghost"])  # an unknown id is skipped
    assert names(document(desired, "dev-a")) == ([], [])
    assert desired.current("ghost") is None


def test_the_version_moves_only_when_the_content_changes(catalog: Catalog, desired: DesiredStore) -> None:
    catalog.put_subscription(sub("lab-temp"), Selector.parse(["site=lab"]), replace=False)
    assert [v.version for v in desired.recompile()] == [1, 1, 1]
    again = desired.recompile()
    assert [(v.version, v.changed) for v in again] == [(1, False)] * 3  # idempotent
    catalog.put_handler(TEMP.model_copy(update={"replicas": 3}), replace=True)
    assert [(v.device, v.version, v.changed) for v in desired.recompile()] == [
        ("dev-a", 2, True),
        ("dev-b", 2, True),
        ("dev-c", 1, False),  # does not run temp-c
    ]
    assert document(desired, "dev-a").handlers[0].replicas == 3


def test_versions_never_decrease_across_restarts_and_a_rollback_is_a_new_version(
    catalog: Catalog, db_url: str, signing_key: Ed25519PrivateKey
) -> None:
    selector = Selector.parse(["site=plant"])
    with Store(db_url) as first:
        hub = DesiredStore(first, signing_key)
        hub.recompile(["dev-c"])
        catalog.put_subscription(sub("plant"), selector, replace=False)
        assert hub.recompile(["dev-c"])[0].version == 2
    with Store(db_url) as second:  # a restarted hub
        hub = DesiredStore(second, signing_key)
        assert hub.recompile(["dev-c"])[0].version == 2
        catalog.remove_subscription("plant")  # back to the content of version 1...
        assert hub.recompile(["dev-c"])[0].version == 3  # ...as a new, higher version
        assert names(document(hub, "dev-c")) == ([], [])


def test_old_versions_are_pruned_but_the_newest_stays(catalog: Catalog, desired: DesiredStore) -> None:
    for n in range(KEEP_VERSIONS + 5):
        catalog.put_handler(TEMP.model_copy(update={"replicas": 1 + n % 2}), replace=True)
        catalog.put_subscription(sub("lab-temp", topic=f"t/{n}"), Selector.parse(["site=lab"]), replace=True)
        desired.recompile(["dev-a"])
    record = desired.current("dev-a")
    assert record is not None
    assert record.version == KEEP_VERSIONS + 5
    assert record.document.subscriptions[0].topic == f"t/{KEEP_VERSIONS + 4}"


def test_a_compile_that_read_an_older_catalog_cannot_publish_it_over_a_newer_one(
    catalog: Catalog, db_url: str, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica B reads the catalog, then stalls; replica A changes the catalog and compiles meanwhile. B must
    not then issue a newer version with the catalog it read before A's change."""
    catalog.put_subscription(sub("lab-temp", topic="old"), Selector.parse(["site=lab"]), replace=False)
    b_read, a_done = threading.Event(), threading.Event()
    real_read = read_snapshot

    def stalling_read(session: Session) -> Snapshot:
        snapshot = real_read(session)
        if threading.current_thread().name == "replica-b":
            b_read.set()
            a_done.wait(1.0)  # with the lock, A cannot finish meanwhile: B goes on after 1 s
        return snapshot

    monkeypatch.setattr("hub.desired.documents.read_snapshot", stalling_read)
    with Store(db_url) as store_a, Store(db_url) as store_b:
        replica_a, replica_b = DesiredStore(store_a, signing_key), DesiredStore(store_b, signing_key)
        b = threading.Thread(target=replica_b.recompile, args=(["dev-a"],), name="replica-b")
        b.start()
        assert b_read.wait(5)
        Catalog(store_a).put_subscription(sub("lab-temp", topic="new"), Selector.parse(["site=lab"]), replace=True)
        replica_a.recompile(["dev-a"])
        a_done.set()
        b.join(10)
        final = document(replica_a, "dev-a")
    assert (final.version, final.subscriptions[0].topic) == (2, "new")


async def test_label_changes_move_a_subscription_between_devices(
    control_api: httpx.AsyncClient, publisher: DesiredPublisher
) -> None:
    assert (await control_api.post("/v1/handlers", json=TEMP.model_dump(mode="json"))).status_code == 201
    body = {"target": ["tier=edge"], "spec": sub("edge").model_dump(mode="json")}
    made = (await control_api.post("/v1/subscriptions", json=body)).json()["desired"]
    assert made == [{"device": "dev-b", "version": 1}]
    assert names(document(publisher.desired, "dev-b"))[1] == ["edge"]

    await control_api.put("/v1/devices/dev-b/labels", json={"remove": ["tier"]})
    await control_api.put("/v1/devices/dev-c/labels", json={"set": {"tier": "edge"}})
    assert names(document(publisher.desired, "dev-b")) == ([], [])
    assert document(publisher.desired, "dev-b").version == 2
    assert names(document(publisher.desired, "dev-c")) == (["temp-c"], ["edge"])

    shown = (await control_api.get("/v1/devices/dev-c/desired")).json()
    assert (shown["version"], shown["key_id"], shown["published_at"]) == (1, publisher.desired.key_id, None)
    assert shown["document"]["subscriptions"][0]["name"] == "edge"
    assert (await control_api.get("/v1/devices/ghost/desired")).status_code == 404


async def test_the_publisher_sends_the_newest_envelope_retained_once(
    catalog: Catalog, publisher: DesiredPublisher, bus: FakeBus, signing_key: Ed25519PrivateKey
) -> None:
    await publisher.changed(["dev-a", "dev-c"])
    assert await publisher.publish_pending() == 2
    assert [(p.topic, p.qos, p.retain) for p in bus.published] == [
        (TOPICS.desired("dev-a"), 1, True),
        (TOPICS.desired("dev-c"), 1, True),
    ]
    doc = verify_document(bus.published[0].payload, signing_key.public_key(), "dev-a")
    assert doc.version == 1
    assert publisher.desired.current("dev-a").published_at == NOW  # type: ignore[union-attr]
    assert await publisher.publish_pending() == 0  # published: not sent again

    bus.fail_publish = True
    catalog.put_subscription(sub("lab"), Selector.parse(["site=lab"]), replace=False)
    await publisher.changed(["dev-a"])
    with pytest.raises(Exception, match="not connected"):
        await publisher.publish_pending()
    bus.fail_publish = False
    assert await publisher.publish_pending() == 1  # still pending after the failure
    assert verify_document(bus.published[-1].payload, signing_key.public_key(), "dev-a").version == 2


async def test_a_push_follows_a_version_made_meanwhile(
    catalog: Catalog, publisher: DesiredPublisher, bus: FakeBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica makes v2 while we publish v1: we publish v2 after, so the retained message is v2."""
    await publisher.changed(["dev-a"])
    real_publish = bus.publish

    async def publish_then_race(topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        await real_publish(topic, payload, qos=qos, retain=retain)
        if len(bus.published) == 1:
            catalog.put_subscription(sub("lab"), Selector.parse(["site=lab"]), replace=False)
            await asyncio.to_thread(publisher.desired.recompile, ["dev-a"])

    monkeypatch.setattr(bus, "publish", publish_then_race)
    assert await publisher.push("dev-a") == 2
    sent = [SignedDesired.model_validate_json(p.payload).document for p in bus.published]
    assert [DesiredDocument.model_validate_json(text).version for text in sent] == [1, 2]


async def test_a_device_seen_for_the_first_time_gets_a_document(publisher: DesiredPublisher, bus: FakeBus) -> None:
    await publisher.device_seen("dev-a")
    assert publisher.desired.current("dev-a") is not None
    await publisher.device_seen("dev-a")  # known now: no store round trip, no new version
    assert publisher.desired.current("dev-a").version == 1  # type: ignore[union-attr]


async def test_run_compiles_every_device_at_start_and_publishes(publisher: DesiredPublisher, bus: FakeBus) -> None:
    task = asyncio.create_task(publisher.run())
    try:
        async with asyncio.timeout(5):
            while len(bus.published) < 3:
                await bus.new_publish.wait()
                bus.new_publish.clear()
    finally:
        task.cancel()
    assert sorted(p.topic for p in bus.published) == [TOPICS.desired(d) for d in ("dev-a", "dev-b", "dev-c")]
