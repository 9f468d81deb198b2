"""``python -m bench.hub_drain [--devices N] [--unbounded]``: the hub's peak RSS and drain time on a backlog that
waits at the broker.

One ``hub serve`` (SQLite) starts and is frozen (SIGSTOP, its connection open: a hub that stalls); the simulated
fleet (``hub simulate``, as the hub capacity phase: 3 windows of 200 results per device, 600,000 results from
1,000 devices) publishes its backlog, and is frozen in turn once the broker acknowledged all of it, so that
nothing is offered during the drain. Then the hub is resumed: its peak RSS (VmHWM, start-up included) and the
seconds until every result is stored. ``--unbounded`` runs the hub with ``[broker] receive_maximum = 0``, the
unbounded read from before the bound (#15). Not part of ``python -m bench``: about a minute per run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.hub import GROUPS, RATE, WINDOW, broker
from bench.hub_procs import HubServer, Simulator, nofile
from bench.procs import cpu_seconds, memory_kib

BACKLOG = 3
"""Windows per device, as the hub capacity phase."""


def drain(devices: int, *, receive_maximum: int | None) -> dict[str, Any]:
    """Preload ``devices`` x BACKLOG x GROUPS results with the hub frozen, resume it, time the drain."""
    want = devices * BACKLOG * GROUPS
    options = {"keepalive": 600}  # the broker keeps a frozen hub's connection
    if receive_maximum is not None:
        options["receive_maximum"] = receive_maximum
    with broker() as mq, tempfile.TemporaryDirectory(prefix="bench-hub-drain-") as tmp:
        hub = HubServer(Path(tmp), mq.port, broker_options=options).start()
        sim = None
        try:
            rss_idle = memory_kib(hub.pid).get("VmRSS", 0)
            os.kill(hub.pid, signal.SIGSTOP)
            sim = Simulator(mq.port, devices, "--rate", str(RATE), "--window", WINDOW, "--backlog", str(BACKLOG),
                            "--resend-after", "600s")  # fmt: skip
            sim.wait_event("ready", timeout=60 + devices / 20)
            preload_deadline = time.monotonic() + 120
            while (line := sim.wait_event("progress", timeout=30)).get("sent", 0) < want:
                if time.monotonic() > preload_deadline:
                    raise TimeoutError(f"the fleet published {line.get('sent')} of {want} results in 120 s")
            os.kill(sim.pid, signal.SIGSTOP)  # nothing more is offered while the hub drains
            cpu0, start = cpu_seconds(hub.pid), time.monotonic()
            os.kill(hub.pid, signal.SIGCONT)
            deadline = start + 60 + want / 2000
            while (stored := hub.stored()) < want and time.monotonic() < deadline:
                time.sleep(0.25)
            seconds = time.monotonic() - start
            hub_cpu, hwm = cpu_seconds(hub.pid) - cpu0, memory_kib(hub.pid).get("VmHWM", 0)
        finally:
            if sim is not None:
                os.kill(sim.pid, signal.SIGCONT)
                sim.close()
            hub.stop()  # SIGTERM also ends a frozen process's stop once it is resumed
            if hub.proc is not None and hub.proc.poll() is None:
                os.kill(hub.pid, signal.SIGCONT)
    return {
        "devices": devices,
        "receive_maximum": "unbounded" if receive_maximum == 0 else (receive_maximum or "default"),
        "results": want,
        "stored": stored,
        "drain_seconds": round(seconds, 1),
        "rate": round(stored / seconds) if seconds > 0 else None,
        "hub_cpu_per_record_us": round(hub_cpu / max(1, stored) * 1e6, 1),
        "hub_rss_idle_mib": round(rss_idle / 1024, 1),
        "hub_hwm_mib": round(hwm / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hub_drain", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--unbounded", action="store_true", help="also run the hub with receive_maximum = 0")
    args = parser.parse_args(argv)
    nofile(args.devices)
    runs = [drain(args.devices, receive_maximum=None)]
    if args.unbounded:
        runs.append(drain(args.devices, receive_maximum=0))
    for run in runs:
        print(json.dumps(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
