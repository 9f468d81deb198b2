"""Hub figures with simulated devices (``hub simulate``, each device its own MQTT session), beside their ceiling.

- ceiling: the fleet floods its outboxes (``--backlog``) into a fresh mosquitto; a bare paho subscriber on
  the hub's shared filter counts the window results (no parsing): what this machine delivers to a consumer;
- ingest: the same fleet offering ``RATE`` results/s per device (10 s windows, one phase per device) to one
  ``hub serve`` (SQLite): results stored per second and the lag from each result's first publish (the
  simulator's ``--record`` file) to its ``stored_at``, read from the hub's database once it stopped;
- rollout: :mod:`bench.hub_rollout`.

Devices resend unacknowledged results after 120 s here (the agent's default is 15 s), so that a hub that falls
behind is measured on first copies, not on the resends its backlog would bring.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.hub_procs import HubServer, Simulator, nofile
from bench.procs import Helper, cpu_seconds, memory_kib, percentile
from scripts.mosquitto import Mosquitto

RATE = 20.0
"""Window results per second per device: 1,000 devices offer the 20,000/s of the target."""
WINDOW = "10s"
GROUPS = 200  # RATE x WINDOW: one batch of 200 results per device per window, as the agent's batch_records


def broker() -> Mosquitto:
    return Mosquitto(extra_config=["max_connections -1"])


def ceiling(devices: int, backlog: int) -> dict[str, Any]:
    """A bare paho subscriber counting the results of ``backlog`` windows per device, sent all at once."""
    want = devices * backlog * GROUPS
    with broker() as mq:
        topic = "$share/hub/edgefleet/devices/+/aggregates"
        with Helper("aggsub", "--port", str(mq.port), "--topic", topic, "--qos", "1", "--count", str(want)) as sub:
            ready = sub.read(timeout=15)
            sim = Simulator(mq.port, devices, "--rate", str(RATE), "--window", WINDOW, "--backlog", str(backlog),
                            "--resend-after", "600s")  # fmt: skip
            try:
                sim.wait_event("ready", timeout=60 + devices / 20)
                done = sub.read(timeout=60 + want / 5000)
                sim_cpu = cpu_seconds(sim.pid)
            finally:
                sim.close()
    seconds = done["last"] - done["first"]
    return {
        "devices": devices,
        "records": done["records"],
        "messages": done["messages"],
        "seconds": round(seconds, 3),
        "rate": done["records"] / seconds if seconds > 0 else None,
        "mib_per_s": round(done["bytes"] / seconds / 2**20, 1) if seconds > 0 else None,
        "cpu_per_record_us": (done["cpu"] - ready["cpu"]) / max(1, done["records"]) * 1e6,
        "simulator_cpu_s": round(sim_cpu, 1),
    }


def capacity(devices: int, backlog: int) -> dict[str, Any]:
    """One ``hub serve`` draining the ceiling's stream (``backlog`` windows per device, sent at once): the most
    results per second it stores, from its first stored result to its last."""
    want = devices * backlog * GROUPS
    with broker() as mq, tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        hub = HubServer(Path(tmp), mq.port).start()
        sim = None
        try:
            cpu0 = cpu_seconds(hub.pid)
            sim = Simulator(mq.port, devices, "--rate", str(RATE), "--window", WINDOW, "--backlog", str(backlog),
                            "--resend-after", "600s")  # fmt: skip
            sim.wait_event("ready", timeout=60 + devices / 20)
            deadline = time.monotonic() + 60 + want / 5000
            while (stored := hub.stored()) < want and time.monotonic() < deadline:
                time.sleep(0.5)
            hub_cpu, hwm = cpu_seconds(hub.pid) - cpu0, memory_kib(hub.pid).get("VmHWM", 0)
        finally:
            if sim is not None:
                sim.close()
            hub.stop()
        db = sqlite3.connect(f"file:{hub.db_path}?mode=ro", uri=True)
        try:
            first, last = db.execute("SELECT min(stored_at), max(stored_at) FROM aggregates").fetchone()
        finally:
            db.close()
    seconds = (last or 0.0) - (first or 0.0)
    return {
        "devices": devices,
        "records": want,
        "stored": stored,
        "seconds": round(seconds, 2),
        "rate": stored / seconds if seconds > 0 else None,
        "hub_cpu_per_record_us": hub_cpu / max(1, stored) * 1e6,  # start-up and the devices' statuses included
        "hub_hwm_mib": round(hwm / 1024, 1),
    }


def ingest(devices: int, seconds: float, warmup: float) -> dict[str, Any]:
    """One ``hub serve`` under ``devices`` x ``RATE`` results/s: stored/s and publish -> stored lag."""
    with broker() as mq, tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        record = Path(tmp) / "published.tsv"
        hub = HubServer(Path(tmp), mq.port).start()
        sim = None
        try:
            sim = Simulator(mq.port, devices, "--rate", str(RATE), "--window", WINDOW, "--resend-after", "120s",
                            "--record", str(record))  # fmt: skip
            ready = sim.wait_event("ready", timeout=60 + devices / 20)
            hub.wait_devices(devices, timeout=120)
            known = time.time()
            time.sleep(max(0.0, ready["at"] + warmup - time.time()))
            start, cpu0, mq_cpu0 = time.time(), cpu_seconds(hub.pid), cpu_seconds(mq.pid or 0)
            time.sleep(seconds)
            end, hub_cpu, mq_cpu = time.time(), cpu_seconds(hub.pid) - cpu0, cpu_seconds(mq.pid or 0) - mq_cpu0
            final = sim.stop()
            hub.wait_stored(quiet=1.0, timeout=10.0)
            stopped, hwm = time.time(), memory_kib(hub.pid).get("VmHWM", 0)
        finally:
            if sim is not None:
                sim.close()
            hub.stop()
        figures = lags(record, hub.db_path, start, end, stopped)
    stored = figures.pop("stored_in_window")
    return {
        "devices": devices,
        "offered_rate": devices * RATE,
        "seconds": round(end - start, 1),
        "rate": stored / (end - start),
        **figures,
        "hub_cpu_cores": round(hub_cpu / (end - start), 2),
        "hub_cpu_per_record_us": hub_cpu / max(1, stored) * 1e6,
        "mosquitto_cpu_cores": round(mq_cpu / (end - start), 2),
        "hub_hwm_mib": round(hwm / 1024, 1),
        "devices_known_after_s": round(known - ready["at"], 1),
        "ack_wait_p99_ms": final.get("ack_wait_p99_ms"),
        "simulator_cpu_s": final.get("cpu_seconds"),
        "simulator_seconds": final.get("seconds"),
        "resent": final.get("resent"),
    }


def lags(record: Path, db_path: Path, start: float, end: float, stopped: float) -> dict[str, Any]:
    """Lag from first publish to ``stored_at`` of the results first published in [start, end].

    A result not stored when the hub stopped counts with the time it had waited by then (a lower bound).
    """
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        stored_at = dict(db.execute("SELECT window_id, stored_at FROM aggregates"))
    finally:
        db.close()
    waits, missing = [], 0
    with record.open() as lines:
        for line in lines:
            window, _, at = line.rstrip("\n").partition("\t")
            published = float(at)
            if not start <= published <= end:
                continue
            stored = stored_at.get(window)
            if stored is None:
                missing += 1
                waits.append(stopped - published)
            else:
                waits.append(stored - published)
    return {
        "published_in_window": len(waits),
        "stored_in_window": sum(1 for at in stored_at.values() if start <= at <= end),
        "stored_total": len(stored_at),
        "not_stored": missing,
        "p50_ms": percentile(waits, 50) * 1000,
        "p99_ms": percentile(waits, 99) * 1000,
        "max_ms": max(waits, default=float("nan")) * 1000,
    }


def run(results: dict[str, Any], quick: bool, phase: Any) -> None:
    """The hub's phases, each recorded under ``hub.*`` by ``phase`` (bench.runner.phase)."""
    from bench import hub_rollout

    devices, seconds, warmup, backlog = (100, 10.0, 5.0, 10) if quick else (1000, 30.0, 10.0, 3)
    try:
        results.setdefault("hub", {})["open_files"] = nofile(devices)
    except RuntimeError as exc:
        results["hub"]["error"] = str(exc)
        return
    phase(results, "hub.ceiling", f"hub ceiling: bare paho on {devices} simulated devices' batches",
          lambda: ceiling(devices, backlog))  # fmt: skip
    phase(results, "hub.capacity", f"hub capacity: draining {backlog} windows of {devices} simulated devices",
          lambda: capacity(devices, backlog))  # fmt: skip
    phase(results, "hub.ingest", f"hub ingest: {devices} simulated devices x {RATE:.0f} results/s",
          lambda: ingest(devices, seconds, warmup))  # fmt: skip
    fleet, soak = (20, 1.0) if quick else (100, 2.0)
    phase(results, "hub.rollout", f"hub rollout over {fleet} simulated devices",
          lambda: hub_rollout.rollout(fleet, soak))  # fmt: skip
