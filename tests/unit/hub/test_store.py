"""The SQL store on a temp SQLite file: exactly-once by window id, query filters, devices."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.db.store import Store
from hub.errors import StoreError
from hub.fleet.devices import Devices
from hub.ingest.aggregates import Aggregates
from tests.support.postgres_db import database_url
from tests.unit.hub.factories import record


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "hub.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, db_path: Path) -> Iterator[Store]:
    """The store on SQLite, and on a fresh PostgreSQL database when EDGEFLEET_TEST_POSTGRES_URL is set."""
    with database_url(request.param, db_path.parent) as url, Store(url) as opened:
        yield opened


def test_a_window_delivered_twice_is_stored_once_and_acked_both_times(store: Store) -> None:
    first = [record(1, start=0.0), record(2, start=10.0)]
    assert Aggregates(store).store_batch("dev-a", first, now=5.0) == [1, 2]
    # Resent after a lost ack: the same windows under the same sequences, plus a new one.
    assert Aggregates(store).store_batch("dev-a", [*first, record(3, start=20.0)], now=6.0) == [1, 2, 3]
    rows = Aggregates(store).query()
    assert sorted(r.window_start for r in rows) == [0.0, 10.0, 20.0]
    # The first delivery wins: a duplicate does not overwrite.
    assert {r.window_start: r.stored_at for r in rows} == {0.0: 5.0, 10.0: 5.0, 20.0: 6.0}


def test_a_duplicate_inside_one_batch_is_stored_once(store: Store) -> None:
    assert Aggregates(store).store_batch("dev-a", [record(1), record(2)]) == [1, 2]  # same window id under two seqs
    assert len(Aggregates(store).query()) == 1


def test_field_states_round_trip(store: Store) -> None:
    rec = record(1, values=(2.0, 4.0, 9.0))
    Aggregates(store).store_batch("dev-a", [rec])
    (row,) = Aggregates(store).query()
    assert row.fields == rec.result.fields
    assert row.window_id == rec.result.id
    assert (row.device, row.subscription, row.revision, row.events, row.stats) == (
        "dev-a",
        "temp",
        "rev1",
        3,
        ["count", "mean"],
    )


def test_query_filters_and_order(store: Store) -> None:
    Aggregates(store).store_batch("dev-a", [record(i, start=100.0 * i) for i in range(1, 6)])
    Aggregates(store).store_batch("dev-b", [record(1, device="dev-b", subscription="hum", start=250.0)])

    assert [r.window_start for r in Aggregates(store).query()] == [500, 400, 300, 250, 200, 100]
    assert {r.device for r in Aggregates(store).query(device="dev-b")} == {"dev-b"}
    assert [r.subscription for r in Aggregates(store).query(subscription="hum")] == ["hum"]
    assert [r.window_start for r in Aggregates(store).query(since=200.0, until=400.0)] == [300, 250, 200]
    assert [r.window_start for r in Aggregates(store).query(device="dev-a", limit=2)] == [500, 400]
    assert Aggregates(store).query(device="nobody") == []


def test_aggregates_register_the_device_and_status_updates_it(store: Store) -> None:
    Aggregates(store).store_batch("dev-a", [record(1)], now=100.0)
    (dev,) = Devices(store).all()
    assert (dev.id, dev.first_seen, dev.last_seen, dev.online) == ("dev-a", 100.0, 100.0, True)

    Devices(store).record_status("dev-a", online=False, agent_version="1.2.3", seen_at=150.0)
    Devices(store).record_status("dev-b", online=True, agent_version="1.0.0", seen_at=120.0)
    a, b = Devices(store).all()
    assert (a.online, a.agent_version, a.last_seen, a.first_seen) == (False, "1.2.3", 150.0, 100.0)
    assert (b.id, b.online, b.agent_version) == ("dev-b", True, "1.0.0")

    # A status replayed late (retained, older) changes the state but never moves last_seen back.
    Devices(store).record_status("dev-a", online=True, agent_version="", seen_at=50.0)
    a, _ = Devices(store).all()
    assert (a.online, a.agent_version, a.last_seen, a.first_seen) == (True, "1.2.3", 150.0, 50.0)


def test_sqlite_runs_in_wal_mode(db_path: Path) -> None:
    with Store(f"sqlite:///{db_path}") as store:
        Aggregates(store).store_batch("dev-a", [record(1)])
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_data_survives_reopening(db_path: Path) -> None:
    with Store(f"sqlite:///{db_path}") as store:
        Aggregates(store).store_batch("dev-a", [record(1)])
    with Store(f"sqlite:///{db_path}") as store:
        assert len(Aggregates(store).query()) == 1
        assert Aggregates(store).store_batch("dev-a", [record(7)]) == [7]
        assert len(Aggregates(store).query()) == 1


def test_lifecycle_is_explicit(db_path: Path) -> None:
    store = Store(f"sqlite:///{db_path}")
    with pytest.raises(StoreError, match="is new"):
        Aggregates(store).query()
    store.open()
    with pytest.raises(StoreError, match="opens once"):
        store.open()
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.ping()


def test_an_unusable_database_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        Store(f"sqlite:///{tmp_path}/missing-dir/hub.db").open()
    assert info.value.operation == "open"


async def test_async_context_opens_in_a_thread(db_path: Path) -> None:
    async with Store(f"sqlite:///{db_path}") as store:
        store.ping()
