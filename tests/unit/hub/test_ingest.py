"""Ingest with a fake bus and a real temp store: acks exact ranges, stores once, survives garbage."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session

from edge_protocol.messages import Ack, SequencedResult
from edge_protocol.topics import Topics
from hub.db.store import Store
from hub.fleet.devices import Devices
from hub.ingest.aggregates import Aggregates
from hub.ingest.consumer import Ingest
from hub.mqtt.broker import Inbound
from hub.mqtt.fake import FakeBus
from tests.unit.hub.factories import batch, record, status

TOPICS = Topics("unit")
AGG = TOPICS.aggregates("dev-a")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rejected(reason: str) -> float:
    return metric("edgefleet_hub_messages_rejected_total", reason=reason)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'hub.db'}") as opened:
        yield opened


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


@pytest.fixture
def ingest(store: Store, bus: FakeBus) -> Ingest:
    return Ingest(store, bus, TOPICS, clock=lambda: 5000.0)


def acks(bus: FakeBus) -> list[tuple[str, Ack]]:
    return [(p.topic, Ack.model_validate_json(p.payload)) for p in bus.published]


async def deliver(ingest: Ingest, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    await ingest.handle(Inbound(topic, data, retain))


async def test_a_batch_is_stored_and_acked_as_exact_ranges(ingest: Ingest, bus: FakeBus, store: Store) -> None:
    sent = batch("dev-a", record(1, start=0), record(2, start=10), record(4, start=30))
    await deliver(ingest, AGG, sent.model_dump_json())
    # Seq 3 never arrived: "highest seq = 4" would let the agent delete it; ranges do not.
    assert acks(bus) == [(TOPICS.acks("dev-a"), Ack(device="dev-a", ranges=[(1, 2), (4, 4)]))]
    assert bus.published[0].qos == 1
    assert len(Aggregates(store).query()) == 3


async def test_a_resent_batch_is_acked_again_and_stored_once(ingest: Ingest, bus: FakeBus, store: Store) -> None:
    sent = batch("dev-a", record(1, start=0), record(2, start=10)).model_dump_json()
    await deliver(ingest, AGG, sent)
    await deliver(ingest, AGG, sent)
    assert [a.ranges for _, a in acks(bus)] == [[(1, 2)], [(1, 2)]]
    assert len(Aggregates(store).query()) == 2


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff not json", "not_json"),
        (b'{"kind": "aggregates", "device": "dev-a"}', "invalid"),
        (b"", "empty"),
        (Ack(device="dev-a", ranges=[(1, 1)]).model_dump_json().encode(), "wrong_kind"),
        (batch("dev-b", record(1, device="dev-b")).model_dump_json().encode(), "device_mismatch"),
        (status("dev-a").model_dump_json().encode(), "wrong_kind"),
    ],
)
async def test_unusable_messages_are_counted_not_fatal(
    ingest: Ingest, bus: FakeBus, store: Store, payload: bytes, reason: str
) -> None:
    before = rejected(reason)
    await deliver(ingest, AGG, payload)
    assert rejected(reason) == before + 1
    assert bus.published == []
    assert Aggregates(store).query() == []


async def test_a_topic_outside_the_prefix_is_counted(ingest: Ingest, bus: FakeBus) -> None:
    before = rejected("unexpected_topic")
    await deliver(ingest, "elsewhere/devices/dev-a/aggregates", b"{}")
    assert rejected("unexpected_topic") == before + 1


async def test_records_that_do_not_fit_are_refused_and_not_acked(ingest: Ingest, bus: FakeBus, store: Store) -> None:
    foreign = record(2, device="dev-z", start=10)  # a window id of another device
    text = batch("dev-a", record(1, start=0), foreign, record(3, start=20, values=(7.0,))).model_dump_json()
    before = metric("edgefleet_hub_records_refused_total", reason="foreign_window_id")
    await deliver(ingest, AGG, text)
    assert [a.ranges for _, a in acks(bus)] == [[(1, 1), (3, 3)]]
    assert [r.window_start for r in Aggregates(store).query()] == [20.0, 0.0]
    assert metric("edgefleet_hub_records_refused_total", reason="foreign_window_id") == before + 1


async def test_a_non_finite_number_rejects_the_message(ingest: Ingest, bus: FakeBus, store: Store) -> None:
    # The wire contract has no inf/NaN (FieldState refuses them), so such a batch does not parse at all.
    text = batch("dev-a", record(1, start=0, values=(7.0,))).model_dump_json().replace('"sum":7.0', '"sum":NaN')
    await deliver(ingest, AGG, text)
    assert acks(bus) == []
    assert Aggregates(store).query() == []


async def test_status_updates_the_device(ingest: Ingest, bus: FakeBus, store: Store) -> None:
    await deliver(ingest, TOPICS.status("dev-a"), status("dev-a", version="1.2.3", ts=100.0).model_dump_json())
    (dev,) = Devices(store).all()
    assert (dev.online, dev.agent_version, dev.last_seen) == (True, "1.2.3", 5000.0)  # live: the hub's clock
    will = status("dev-a", online=False, ts=50.0).model_dump_json()  # a will carries the connect time
    await deliver(ingest, TOPICS.status("dev-a"), will)
    (dev,) = Devices(store).all()
    assert (dev.online, dev.last_seen) == (False, 5000.0)
    assert bus.published == []


async def test_a_retained_status_counts_from_its_own_time(ingest: Ingest, bus: FakeBus, store: Store) -> None:
    await deliver(ingest, TOPICS.status("dev-q"), status("dev-q", ts=123.0).model_dump_json(), retain=True)
    (dev,) = Devices(store).all()
    assert (dev.id, dev.last_seen) == ("dev-q", 123.0)


async def test_a_store_failure_leaves_the_batch_unacked(ingest: Ingest, bus: FakeBus, store: Store) -> None:
    before = metric("edgefleet_hub_failures_total", operation="store")
    store.close()
    await deliver(ingest, AGG, batch("dev-a", record(1)).model_dump_json())
    assert bus.published == []
    assert metric("edgefleet_hub_failures_total", operation="store") == before + 1


async def test_a_lost_ack_is_sent_when_the_agent_resends(ingest: Ingest, bus: FakeBus, store: Store) -> None:
    sent = batch("dev-a", record(1)).model_dump_json()
    before = metric("edgefleet_hub_failures_total", operation="ack")
    bus.fail_publish = True
    await deliver(ingest, AGG, sent)
    assert metric("edgefleet_hub_failures_total", operation="ack") == before + 1
    bus.fail_publish = False
    await deliver(ingest, AGG, sent)
    assert [a.ranges for _, a in acks(bus)] == [[(1, 1)]]
    assert len(Aggregates(store).query()) == 1


async def test_run_subscribes_processes_and_stops_on_cancel(ingest: Ingest, bus: FakeBus) -> None:
    async with asyncio.timeout(10):
        task = asyncio.create_task(ingest.run(), name="test.ingest")
        await ingest.ready.wait()
        assert bus.filters == {
            "$share/hub/unit/devices/+/aggregates": 1,
            "unit/devices/+/status": 1,
            "unit/devices/+/reported": 1,
        }
        bus.inject(AGG, b"garbage")  # does not stop the loop
        bus.inject(AGG, batch("dev-a", record(9)).model_dump_json())
        await bus.new_publish.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [a.ranges for _, a in acks(bus)] == [[(9, 9)]]


async def test_a_batch_being_stored_at_shutdown_is_finished_and_acked(
    ingest: Ingest, bus: FakeBus, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real = Aggregates.insert_batches

    def slow_insert_batches(
        self: Aggregates, session: Session, batches: list[tuple[str, list[SequencedResult]]], now: float
    ) -> list[dict[int, str]]:
        entered.set()
        release.wait(10)  # fault: a slow disk
        return real(self, session, batches, now)

    monkeypatch.setattr(Aggregates, "insert_batches", slow_insert_batches)
    async with asyncio.timeout(10):
        task = asyncio.create_task(ingest.run(), name="test.ingest")
        bus.inject(AGG, batch("dev-a", record(1)).model_dump_json())
        await asyncio.to_thread(entered.wait, 10)
        task.cancel()  # shutdown starts while the batch is being written
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [a.ranges for _, a in acks(bus)] == [[(1, 1)]]
