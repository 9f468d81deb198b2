"""Issue 15: several ``hub serve`` processes on one PostgreSQL database and one broker share the fleet's stream.

Aggregates reach the replicas through the shared subscription, statuses and reported states reach every replica.
Simulated devices (the fleet simulator in this test's process, so that the test reads each device's outbox)
stream windows; one replica is SIGKILLed mid-stream and started again. At the end:

- every window is stored exactly once and as it was made: per device, the stored window ids are the ones it
  made (nothing foreign), each with the events and the content hash of the record it sent, and the events of
  the windows acknowledged add up to what it made;
- every ack reached its device: each device's outbox empties (no record unacknowledged) after the restart, and
  everything made until then is acknowledged;
- the online flags are right: every device online while it runs, offline once the fleet stopped;
- statuses and reported states are not written once per replica: the reported rows written over all replicas
  are at most the reports one replica received (docs/decisions.md, "statuses and reported states on several
  replicas"); the figures are printed (``-s``).

Skipped without EDGEFLEET_TEST_POSTGRES_URL; each test has a database of its own.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet_simulator.fleet import SimConfig, raise_open_files
from scripts.mosquitto import Mosquitto
from tests.support.postgres_db import fresh_database, server_url
from tests.support.replicas import (
    Replica,
    RunningFleet,
    Window,
    hub_replicas,
    made_windows,
    running_fleet,
    stored_windows,
)
from tests.support.running import wait_for

pytestmark = pytest.mark.integration

RESEND_AFTER = 3.0
"""The devices' resend timer: what the killed replica held in flight comes back after this."""
WRITES = "edgefleet_hub_fleet_writes_total"


@dataclass(frozen=True)
class Case:
    replicas: int
    devices: int
    kills: int
    stream: float
    """Seconds of streaming before each kill, while the replica is down, and after its restart."""
    window: float = 1.0
    rate: float = 10.0
    """Results per second per device (groups of a window)."""


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Case(replicas=2, devices=40, kills=1, stream=4.0), id="2-replicas"),
        pytest.param(Case(replicas=3, devices=40, kills=1, stream=4.0), id="3-replicas"),
        pytest.param(
            Case(replicas=3, devices=300, kills=3, stream=10.0),
            id="3-replicas-300-devices-3-kills",
            marks=[pytest.mark.slow, pytest.mark.timeout(900)],
        ),
    ],
)
async def test_replicas_share_the_stream_and_survive_a_kill(
    cloud_broker: Mosquitto, tmp_path: Path, case: Case
) -> None:
    raise_open_files(case.devices + 1_024)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    config = SimConfig(
        host=cloud_broker.host, port=cloud_broker.port, prefix=prefix, devices=case.devices,
        device_prefix=f"r{uuid.uuid4().hex[:4]}", window=case.window, rate=case.rate, resend_after=RESEND_AFTER,
        report_every=1.0,
    )  # fmt: skip
    with (
        fresh_database(server_url()) as store_url,
        hub_replicas(cloud_broker, prefix, store_url, tmp_path, case.replicas) as hubs,
    ):
        for hub in hubs:
            await hub.daemon.start()
        killed_writes = {"devices": 0.0, "reported": 0.0}
        async with running_fleet(config) as fleet:
            sim = fleet.sim
            await fleet.wait(lambda: sim.stats.connected == case.devices, timeout=60, what="every device up")
            await fleet.wait(lambda: all(s.acked_through > 0 for s in sim.device_stats()), timeout=60,
                             what="a first ack for every device")  # fmt: skip
            await wait_for(lambda: _online(hubs[-1], case.devices), timeout=30, interval=0.5,
                           what="every device online")  # fmt: skip
            for kill in range(case.kills):
                victim = hubs[kill % len(hubs)]
                await _stream(case.stream)
                for table in killed_writes:
                    killed_writes[table] += victim.metric(WRITES, table=table, outcome="written")
                victim.daemon.kill()
                await _stream(case.stream)
                await victim.daemon.start()
                await _stream(case.stream)
            made = {s.id: s.generated for s in sim.device_stats()}
            await _drained(fleet, made)
            assert all(_online(hub, case.devices) for hub in hubs)
            writes = _writes(hubs, killed_writes)
        # The fleet stopped: every device said offline (its last word), whichever replica applied it last.
        await wait_for(lambda: _offline(hubs[0], case.devices), timeout=30, interval=0.5,
                       what="every device offline")  # fmt: skip
        for hub in hubs:
            log = hub.daemon.log_text()
            assert "Traceback" not in log, f"{hub.name}:\n{hub.daemon.tail(40)}"
        _assert_stored_once(fleet, stored_windows(store_url))
    print(f"\n{case}: fleet rows written {writes}")
    # Each report is written once at most over all replicas (not once per replica).
    assert writes["reported_written"] <= writes["reported_received"], writes


async def _stream(seconds: float) -> None:
    """Let the fleet stream (the test has nothing to wait for: time passing is the point)."""
    deadline = time.monotonic() + seconds
    await wait_for(lambda: time.monotonic() >= deadline, timeout=seconds + 5, interval=0.2, what="streaming")


async def _drained(fleet: RunningFleet, made: dict[str, int]) -> None:
    """Everything made until now acknowledged, and each device's outbox seen empty (no record unacked)."""
    sim = fleet.sim
    empty: set[str] = set()

    def drained() -> bool:
        stats = sim.device_stats()
        empty.update(s.id for s in stats if s.pending == 0 and s.acked_through >= made[s.id])
        return len(empty) == len(stats)

    await fleet.wait(drained, timeout=60, what="every device's outbox acknowledged and empty",
                     detail=lambda: [s for s in sim.device_stats() if s.id not in empty][:2])  # fmt: skip


def _devices(hub: Replica) -> list[dict[str, object]]:
    response = hub.get("/v1/devices")
    response.raise_for_status()
    return list(response.json())


def _online(hub: Replica, count: int) -> bool:
    shown = _devices(hub)
    return len(shown) == count and all(d["online"] for d in shown)


def _offline(hub: Replica, count: int) -> bool:
    shown = _devices(hub)
    return len(shown) == count and not any(d["online"] for d in shown)


def _writes(hubs: list[Replica], killed: dict[str, float]) -> dict[str, float]:
    """Rows written over all replicas (killed incarnations included), and the reports one replica received."""
    out = {f"{table}_written": sum(h.metric(WRITES, table=table, outcome="written") for h in hubs) + killed[table]
           for table in ("devices", "reported")}  # fmt: skip
    out["devices_unchanged"] = sum(h.metric(WRITES, table="devices", outcome="unchanged") for h in hubs)
    out["reported_unchanged"] = sum(h.metric(WRITES, table="reported", outcome="unchanged") for h in hubs)
    # The replica never killed received every report (the others missed those sent while they were down).
    out["reported_received"] = max(h.metric("edgefleet_hub_messages_total", channel="reported") for h in hubs)
    return out


def _assert_stored_once(fleet: RunningFleet, stored: dict[str, dict[str, Window]]) -> None:
    sim = fleet.sim
    final = {s.id: s for s in sim.device_stats()}
    unknown = set(stored) - set(final)
    assert not unknown, f"stored windows of devices that do not exist: {sorted(unknown)[:5]}"
    for device, stats in final.items():
        made = made_windows(sim, device)
        acked = made_windows(sim, device, through=stats.acked_through)
        mine = stored.get(device, {})
        strangers = set(mine) - set(made)
        assert not strangers, f"{device}: stored windows it never made: {sorted(strangers)[:3]}"
        missing = set(acked) - set(mine)
        assert not missing, f"{device}: acknowledged windows not stored: {sorted(missing)[:3]}"
        differ = [w for w in mine if mine[w] != made[w]]
        assert not differ, f"{device}: stored windows differ from those sent: {differ[:3]}"
        events = sum(w.events for w in acked.values())
        assert sum(mine[w].events for w in acked) == events, f"{device}: events stored differ from those made"
