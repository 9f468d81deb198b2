"""A redelivery is acked as stored; another window under a stored window id is a conflict: refused and counted.

On SQLite, and on a fresh PostgreSQL database when EDGEFLEET_TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text

from edge_protocol.aggregate import WindowResult
from edge_protocol.messages import CLOUD_MESSAGE, Ack, Refusal, SequencedResult
from edge_protocol.topics import Topics
from hub.db import migrations
from hub.db.store import Store
from hub.ingest.aggregates import Aggregates
from hub.ingest.conflicts import Refusals, content_hash
from hub.ingest.consumer import Ingest
from hub.mqtt.broker import Inbound
from hub.mqtt.fake import FakeBus
from tests.support.postgres_db import database_url
from tests.unit.hub.factories import batch, record

TOPICS = Topics("unit")
AGG = TOPICS.aggregates("dev-a")


def conflicts() -> float:
    return REGISTRY.get_sample_value("edgefleet_hub_records_refused_total", {"reason": "conflict"}) or 0.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with database_url(request.param, tmp_path) as url, Store(url) as opened:
        yield opened


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


@pytest.fixture
def ingest(store: Store, bus: FakeBus) -> Ingest:
    return Ingest(store, bus, TOPICS, clock=lambda: 5000.0)


def acks(bus: FakeBus) -> list[Ack]:
    out = []
    for published in bus.published:
        assert published.topic == TOPICS.acks("dev-a")
        msg = CLOUD_MESSAGE.validate_json(published.payload)
        assert isinstance(msg, Ack)
        out.append(msg)
    return out


async def deliver(ingest: Ingest, *records: SequencedResult) -> None:
    await ingest.handle(Inbound(AGG, batch("dev-a", *records).model_dump_json().encode(), False))


def other_content(seq: int, start: float = 1000.0) -> SequencedResult:
    """The window of ``record(seq)`` (same id) with other values: what a colliding device or subscription sends."""
    return record(seq, values=(7.0, 8.0), start=start)


async def test_the_same_window_again_is_acked_as_stored(ingest: Ingest, bus: FakeBus, store: Store) -> None:
    before = conflicts()
    await deliver(ingest, record(1))
    await deliver(ingest, record(5))  # the same window under a new sequence: e.g. re-read after an agent crash
    assert acks(bus) == [Ack(device="dev-a", ranges=[(1, 1)]), Ack(device="dev-a", ranges=[(5, 5)])]
    assert conflicts() == before
    assert Refusals(store).by_device("dev-a") == {}


async def test_another_window_under_a_stored_id_is_refused_and_counted(
    ingest: Ingest, bus: FakeBus, store: Store
) -> None:
    before = conflicts()
    await deliver(ingest, record(1), record(2, start=2000.0))
    await deliver(ingest, other_content(3), record(4, start=3000.0))
    first, stored, refused = acks(bus)
    assert first == Ack(device="dev-a", ranges=[(1, 2)])
    assert stored == Ack(device="dev-a", ranges=[(4, 4)])  # seq 3 is not acked as stored...
    assert refused == Ack(device="dev-a", refused=[Refusal(seq=3, reason="conflict")])  # ...but refused
    assert conflicts() == before + 1
    assert Refusals(store).by_device("dev-a") == {"conflict": 1}
    # The first window stays as it was stored.
    (kept,) = [r for r in Aggregates(store).query() if r.window_id == record(1).result.id]
    assert kept.events == 3
    assert kept.fields == record(1).result.fields


async def test_a_conflict_resent_is_refused_again_and_counted_once_per_device(
    ingest: Ingest, bus: FakeBus, store: Store
) -> None:
    before = conflicts()
    await deliver(ingest, record(1))
    await deliver(ingest, other_content(2))
    await deliver(ingest, other_content(2))  # an older agent misses the refusal and resends
    assert [a.refused for a in acks(bus)[1:]] == [[Refusal(seq=2, reason="conflict")]] * 2
    assert conflicts() == before + 2  # the metric counts refusals...
    assert Refusals(store).by_device("dev-a") == {"conflict": 1}  # ...the device shows distinct windows


async def test_two_contents_under_one_id_in_one_batch_store_the_first(
    ingest: Ingest, bus: FakeBus, store: Store
) -> None:
    await deliver(ingest, record(1), other_content(2), record(3))
    assert acks(bus) == [
        Ack(device="dev-a", ranges=[(1, 1), (3, 3)]),
        Ack(device="dev-a", refused=[Refusal(seq=2, reason="conflict")]),
    ]
    assert [r.events for r in Aggregates(store).query()] == [3]


def test_store_batch_returns_no_sequence_for_a_conflict(store: Store) -> None:
    assert Aggregates(store).store_batch("dev-a", [record(1)]) == [1]
    assert Aggregates(store).store_batch("dev-a", [record(2), other_content(3), record(4, start=9.0)]) == [2, 4]


def test_a_row_stored_before_the_hash_existed_is_compared_by_its_content(store: Store) -> None:
    Aggregates(store).store_batch("dev-a", [record(1, sketch=True)])
    with store.transaction("test") as session:
        session.execute(text("UPDATE aggregates SET content_hash = NULL"))
    assert Aggregates(store).store_batch("dev-a", [record(2, sketch=True)]) == [2]  # a redelivery
    assert Aggregates(store).store_batch("dev-a", [other_content(3)]) == []  # a conflict


def test_an_older_database_gets_the_hash_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with Store(f"sqlite:///{path}") as store:
        Aggregates(store).store_batch("dev-a", [record(1)])
    engine = create_engine(f"sqlite:///{path}")
    migrations.downgrade(engine, "0002")  # the schema from before the hash, with the row kept
    engine.dispose()
    with Store(f"sqlite:///{path}") as store:
        assert Aggregates(store).store_batch("dev-a", [record(2)]) == [2]
        assert Aggregates(store).store_batch("dev-a", [other_content(3)]) == []
        with store.transaction("test") as session:
            hashes = session.execute(text("SELECT content_hash FROM aggregates")).scalars().all()
    assert hashes == [None]  # the old row keeps no hash; it was compared by its content


def _reversed(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reversed(value[key]) for key in reversed(list(value))}
    return value


def test_the_hash_ignores_key_order_and_sees_every_value() -> None:
    one = record(1, sketch=True).result
    result = one.model_copy(update={"fields": {"x": one.fields["temp"], **one.fields}})
    reordered = WindowResult.model_validate_json(orjson.dumps(_reversed(result.model_dump(mode="json"))))
    assert reordered == result
    assert reordered.model_dump_json() != result.model_dump_json()
    assert content_hash(reordered) == content_hash(result)
    assert content_hash(other_content(1).result) != content_hash(result)
    assert content_hash(result.model_copy(update={"events": result.events + 1})) != content_hash(result)


def test_an_ack_without_refusals_is_the_old_wire_form() -> None:
    ack = Ack(device="d", ranges=[(1, 2)])
    assert set(CLOUD_MESSAGE.validate_json(ack.wire()).model_dump()) == {"kind", "v", "device", "ranges", "refused"}
    assert b"refused" not in ack.wire()  # an older agent rejects unknown keys
    old = b'{"kind": "ack", "v": 1, "device": "d", "ranges": [[1, 2]]}'
    assert CLOUD_MESSAGE.validate_json(old) == ack  # and an older hub's ack still parses
    refusal = Ack(device="d", refused=[Refusal(seq=3, reason="conflict")])
    assert CLOUD_MESSAGE.validate_json(refusal.wire()) == refusal


def test_one_insert_of_several_batches_stores_the_new_and_refuses_only_the_conflicts(store: Store) -> None:
    """One statement for several devices' batches (PostgreSQL: column arrays): new rows stored with their JSON
    intact, a redelivery not refused, a conflict refused in its own batch only."""
    aggregates = Aggregates(store)
    assert aggregates.store_batch("dev-a", [record(1), record(2, start=2000.0)]) == [1, 2]
    new_b = [record(7, device="dev-b", sketch=True), record(8, device="dev-b", start=3000.0, stats=("max",))]
    with store.transaction("test") as session:
        mixed = [record(3), other_content(4, start=2000.0), record(5, start=4000.0)]
        refused = aggregates.insert_batches(session, [("dev-a", mixed), ("dev-b", new_b)], 6000.0)
    assert refused == [{4: "conflict"}, {}]
    stored = {(r.device, r.window_start): r for r in aggregates.query()}
    assert sorted(stored) == [("dev-a", 1000.0), ("dev-a", 2000.0), ("dev-a", 4000.0), ("dev-b", 1000.0),
                              ("dev-b", 3000.0)]  # fmt: skip
    assert stored["dev-a", 2000.0].events == 3  # the first content kept
    assert stored["dev-b", 1000.0].fields == new_b[0].result.fields
    assert stored["dev-b", 3000.0].stats == ["max"]
    assert stored["dev-a", 4000.0].stored_at == 6000.0
