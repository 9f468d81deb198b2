"""The registry keeps each device's newest reported state in the order the device made them (run, seq), not by
the device's clock: a report made after the clock was set back replaces the older one, a replayed or late copy
of an older report changes nothing, whichever hub replica writes it. On SQLite, and on PostgreSQL (a fresh
database per test) when EDGEFLEET_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_protocol.messages import Reported
from hub.db.store import Store
from hub.fleet.registry import Fleet
from tests.support.postgres_db import database_url
from tests.unit.hub.conftest import NOW
from tests.unit.hub.factories import reported

HOUR = 3600.0


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store of ``fleet_store`` (conftest): SQLite, and a fresh PostgreSQL database when
    EDGEFLEET_TEST_POSTGRES_URL is set (skipped otherwise)."""
    with database_url(request.param, tmp_path) as url:
        yield url


def numbered(applied: int, *, run: int | None, seq: int | None, ts: float) -> Reported:
    return reported("dev-a", applied=applied, ts=ts).model_copy(update={"run": run, "seq": seq})


def stored(store: Store) -> int | None:
    view = Fleet(store).device("dev-a")
    assert view is not None
    return view.applied_version


def write(store: Store, report: Reported, received_at: float = NOW) -> None:
    Fleet(store).record_reported(report, seen_at=received_at, received_at=received_at)


def test_a_report_after_the_device_clock_was_set_back_replaces_the_older_one(fleet_store: Store) -> None:
    write(fleet_store, numbered(1, run=3, seq=7, ts=NOW + HOUR))  # the clock an hour fast
    write(fleet_store, numbered(2, run=3, seq=8, ts=NOW + 60))  # corrected: the device's ts went back
    assert stored(fleet_store) == 2
    write(fleet_store, numbered(3, run=3, seq=9, ts=NOW + 90))
    assert stored(fleet_store) == 3


def test_a_new_run_wins_whatever_its_clock_says(fleet_store: Store) -> None:
    write(fleet_store, numbered(1, run=3, seq=500, ts=NOW + HOUR))
    write(fleet_store, numbered(2, run=4, seq=1, ts=NOW))  # restarted with its clock set right
    assert stored(fleet_store) == 2


def test_an_older_report_written_late_or_replayed_changes_nothing(fleet_store: Store) -> None:
    write(fleet_store, numbered(2, run=4, seq=2, ts=NOW - HOUR))
    write(fleet_store, numbered(1, run=4, seq=1, ts=NOW + HOUR), received_at=NOW + 10)  # a slow replica
    write(fleet_store, numbered(0, run=3, seq=900, ts=NOW + HOUR), received_at=NOW + 20)  # the last run's
    assert stored(fleet_store) == 2
    write(fleet_store, numbered(2, run=4, seq=2, ts=NOW - HOUR), received_at=NOW + 30)  # the same again: idempotent
    assert stored(fleet_store) == 2


def test_replicas_writing_at_once_end_on_the_newest(fleet_store: Store) -> None:
    reports = [numbered(seq, run=5, seq=seq, ts=NOW - seq) for seq in range(1, 41)]  # the clock running back

    def replica(order: list[Reported]) -> None:
        for r in order:
            write(fleet_store, r)

    threads = [
        threading.Thread(target=replica, args=(reports,)),
        threading.Thread(target=replica, args=(reports[::-1],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert stored(fleet_store) == 40


def test_older_agents_without_a_run_are_ordered_by_their_clock_and_an_upgrade_takes_over(fleet_store: Store) -> None:
    write(fleet_store, numbered(2, run=None, seq=None, ts=NOW))
    write(fleet_store, numbered(1, run=None, seq=None, ts=NOW - 10))  # an older retained copy
    assert stored(fleet_store) == 2
    write(fleet_store, numbered(3, run=1, seq=1, ts=NOW - HOUR))  # the upgraded agent, its clock behind
    assert stored(fleet_store) == 3
    payload = numbered(3, run=1, seq=1, ts=NOW).wire()
    assert b'"run":1' in payload
    assert b'"seq":1' in payload
    assert b'"run"' not in numbered(3, run=None, seq=None, ts=NOW).wire()  # an older hub still reads it
