"""Every hub replica receives every status and reported state (plain subscriptions): the second replica to
apply one writes nothing, a change is written once, and the replicas still end on the device's last word.

Two write queues, each on its own store object (two processes' connections) to one database: SQLite, and
PostgreSQL when EDGEFLEET_TEST_POSTGRES_URL is set (a fresh database). Rows written are counted by the
``edgefleet_hub_fleet_writes_total`` metric, which counts what the database's RETURNING says it wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from edge_protocol.messages import Reported
from hub.db.store import Store
from hub.fleet.devices import Devices, DeviceSeen
from hub.fleet.registry import Fleet, ReportedState
from hub.ingest.writes import BatchWrite, Write, WriteQueue
from tests.support.postgres_db import database_url
from tests.unit.hub.factories import record, reported

NOW = 10_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as fresh:
        yield fresh


@pytest.fixture
def stores(url: str) -> Iterator[tuple[Store, Store]]:
    with Store(url) as one, Store(url) as two:
        yield one, two


def written(table: str) -> float:
    return REGISTRY.get_sample_value("edgefleet_hub_fleet_writes_total", {"table": table, "outcome": "written"}) or 0


async def apply(store: Store, writes: list[Write]) -> None:
    queue = WriteQueue(store, clock=lambda: NOW)
    for write in writes:
        await queue.put(write)
    await queue.flush()


def numbered(device: str, seq: int, *, ts: float) -> Reported:
    return reported(device, applied=seq, ts=ts).model_copy(update={"run": 1, "seq": seq})


async def test_the_second_replica_writes_nothing_for_the_same_statuses_and_reports(
    stores: tuple[Store, Store],
) -> None:
    one, two = stores
    devices = [f"dev-{i}" for i in range(10)]

    def stream(clock: float) -> list[Write]:
        # As each replica receives it live: stamped with its own clock (a few ms apart).
        out: list[Write] = []
        for dev in devices:
            out.append(DeviceSeen(dev, clock, True, "0.2.0"))
            out += [ReportedState(numbered(dev, seq, ts=NOW + seq), clock, clock) for seq in (1, 2)]
        return out

    before = written("devices"), written("reported")
    await apply(one, stream(NOW))
    first = written("devices") - before[0], written("reported") - before[1]
    # Each device inserted once; its two reports, in one group, written as the newest once.
    assert first == (len(devices), len(devices))
    await apply(two, stream(NOW + 0.05))
    assert (written("devices") - before[0], written("reported") - before[1]) == first

    # A restarted replica gets the retained status and report again, stamped with their own ts (the device's
    # clock when it published them, a little before the hub received them): nothing.
    retained: list[Write] = []
    for dev in devices:
        retained += [DeviceSeen(dev, NOW - 0.2, True, "0.2.0"), ReportedState(numbered(dev, 2, ts=NOW + 2), NOW, NOW)]
    await apply(one, retained)
    assert (written("devices") - before[0], written("reported") - before[1]) == first

    # Batches from another replica within the resolution do not move last_seen either.
    await apply(two, [BatchWrite(dev, [record(1, device=dev)]) for dev in devices])
    assert written("devices") - before[0] == first[0]
    info = {d.id: d for d in Devices(one).all()}
    assert all(info[dev].online and info[dev].last_seen == NOW for dev in devices)
    views = {v.info.id: v for v in Fleet(one).devices()}
    assert all(views[dev].applied_version == 2 for dev in devices)


async def test_a_change_is_written_once_and_a_lagging_replica_ends_on_the_last_word(
    stores: tuple[Store, Store],
) -> None:
    one, two = stores
    online, offline = DeviceSeen("dev-a", NOW, True, "0.2.0"), DeviceSeen("dev-a", NOW + 0.5, False, "0.2.0")
    before = written("devices")
    await apply(one, [online])
    await apply(one, [offline])
    assert written("devices") - before == 2
    # The other replica applies the same two statuses after the first one finished: the online one flips the
    # flag back for a moment (as before this change), its offline then writes the last word again.
    await apply(two, [online])
    await apply(two, [offline])
    assert written("devices") - before == 4
    device = Devices(one).all()[0]
    assert (device.online, device.last_seen) == (False, NOW + 0.5)
    # In step (the usual case: both replicas receive each status at once), each change is written once.
    back = DeviceSeen("dev-a", NOW + 30, True, "0.2.0")
    await apply(one, [back])
    await apply(two, [DeviceSeen("dev-a", NOW + 30.02, True, "0.2.0")])
    assert written("devices") - before == 5
    assert Devices(two).all()[0].online


async def test_last_seen_moves_beyond_its_resolution(stores: tuple[Store, Store]) -> None:
    one, _ = stores
    await apply(one, [DeviceSeen("dev-a", NOW, True, "0.2.0")])
    await apply(one, [DeviceSeen("dev-a", NOW + 0.9)])
    assert Devices(one).all()[0].last_seen == NOW
    await apply(one, [DeviceSeen("dev-a", NOW + 2.0)])
    assert Devices(one).all()[0].last_seen == NOW + 2.0
    # A new agent version is always written, whatever the time.
    await apply(one, [DeviceSeen("dev-a", NOW + 2.1, True, "0.3.0")])
    assert Devices(one).all()[0].agent_version == "0.3.0"
