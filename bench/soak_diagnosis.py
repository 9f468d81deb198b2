"""``python -m bench.soak_diagnosis [--seconds 600]``: why a soak second is slow, one row per second.

The soak's load (5,000 events/s QoS 1 through the echo handler, the shipped device broker's limits) on a fresh
agent, and every second: p50/p99 through the agent; a bare broker round trip beside it (a second publisher at
200/s and its own subscriber, no agent); the machine's busy and steal time (/proc/stat); CPU pressure
(/proc/pressure/cpu); each process's CPU and the time its threads waited for a CPU (schedstat); and the CPU
time of a fixed 100,000-step loop (the calibration: when the same work costs more CPU, the CPU got slower).
Prints the seconds with p99 <= 5 ms against those over 10 ms, and a line per minute; ``--output`` keeps the rows.
docs/performance.md ("Why some soak minutes fail") has what it found.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import pipeline
from bench.agentproc import AgentProcess
from bench.procs import TICK, Helper, calibration_us, device_broker_limits
from scripts.mosquitto import Mosquitto
from tests.support.engine import connect_engine

RATE, CONTROL_RATE = 5000, 200
CONTROL_TOPIC = "bench/control/x"


def machine() -> list[int]:
    """The aggregate "cpu" line of /proc/stat: user nice system idle iowait irq softirq steal ... (ticks)."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def cpu_pressure_us() -> int:
    """Total µs in which some runnable task waited for a CPU (-1 without PSI)."""
    try:
        return int(Path("/proc/pressure/cpu").read_text().splitlines()[0].split("total=")[1])
    except (OSError, IndexError):
        return -1


def process(pid: int) -> tuple[float, float]:
    """(CPU seconds, seconds its threads waited on a run queue) so far; zeros once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        waited = sum(int((t / "schedstat").read_text().split()[1]) for t in Path(f"/proc/{pid}/task").iterdir())
        return (int(fields[11]) + int(fields[12])) / TICK, waited / 1e9
    except (OSError, IndexError):
        return 0.0, 0.0


class Sampler:
    """A row per second of wall-clock time, in a thread, for the processes in ``pids`` (which may grow)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-diagnosis", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last_machine, last_pressure = machine(), cpu_pressure_us()
        last = {name: process(pid) for name, pid in self.pids.items()}
        while not self._stop.wait(1.0 - time.time() % 1.0):
            now, ticks, pressure = time.time(), machine(), cpu_pressure_us()
            d = [a - b for a, b in zip(ticks, last_machine, strict=False)]
            total = sum(d[:8]) or 1
            row: dict[str, Any] = {
                "t": now,
                "busy_cores": (d[0] + d[1] + d[2] + d[5] + d[6]) / total * 2,
                "steal_cores": d[7] / total * 2,
                "pressure_ms": (pressure - last_pressure) / 1000,
            }
            last_machine, last_pressure = ticks, pressure
            for name, pid in list(self.pids.items()):
                cpu, waited = process(pid)
                cpu0, waited0 = last.get(name, (cpu, waited))
                row[name] = {"cores": cpu - cpu0, "waited_ms": (waited - waited0) * 1000}
                last[name] = (cpu, waited)
            row["calibration_us"] = calibration_us()
            self.rows.append(row)


def run(seconds: float) -> dict[str, Any]:
    client = connect_engine()
    limits = device_broker_limits(min_queued=150_000, sys_interval=1)
    with Mosquitto(extra_config=limits) as broker, tempfile.TemporaryDirectory(prefix="bench-diagnosis-") as tmp:
        agent = AgentProcess(pipeline.bench_document("diagnosis", Path(tmp), broker.port), docker_client=client)
        agent.start()
        try:
            pids = {"agent": agent.pid, "broker": broker.pid or 0}
            pids.update({f"handler {name}": pid for name, pid in agent.handler_pids().items()})
            port = str(broker.port)
            with (
                Sampler(pids) as sampler,
                Helper("latsub", "--port", port, "--topic", pipeline.LATENCY_OUT, "--count", str(int(RATE * seconds)),
                       "--idle", "10", "--per-events", str(RATE)) as sub,
                Helper("latsub", "--port", port, "--topic", CONTROL_TOPIC, "--count",
                       str(int(CONTROL_RATE * seconds)), "--idle", "10", "--per-events", str(CONTROL_RATE)) as ctl,
            ):  # fmt: skip
                sub.read(timeout=15)
                ctl.read(timeout=15)
                pids["subscriber"] = sub.pid
                with (
                    Helper("pace", "--port", port, "--topic", pipeline.LATENCY_TOPIC, "--qos", "1", "--rate",
                           str(RATE), "--seconds", str(seconds)) as pub,
                    Helper("pace", "--port", port, "--topic", CONTROL_TOPIC, "--qos", "1", "--rate",
                           str(CONTROL_RATE), "--seconds", str(seconds)) as control_pub,
                ):  # fmt: skip
                    started = pub.read(timeout=15)["started"]
                    pids["publisher"] = pub.pid
                    control_pub.read(timeout=15)
                    pub.read(timeout=seconds * 1.5 + 60)
                    control_pub.read(timeout=seconds * 1.5 + 60)
                agent_path = sub.read(timeout=120)["per"]
                control = ctl.read(timeout=120)["per"]
        finally:
            agent.stop()
    by_second = {p["index"]: p for p in agent_path}
    bare = {p["index"]: p for p in control}
    rows = []
    for row in sampler.rows:
        second = int(row["t"] - started) - 1  # a row at t covers the second before it
        if second in by_second:
            rows.append({"second": second, "p50_ms": by_second[second]["p50_ms"],
                         "p99_ms": by_second[second]["p99_ms"],
                         "bare_p99_ms": bare.get(second, {}).get("p99_ms"), **row})  # fmt: skip
    return {"seconds": seconds, "rows": rows}


def report(rows: list[dict[str, Any]]) -> None:
    good = [r for r in rows if r["p99_ms"] <= 5]
    bad = [r for r in rows if r["p99_ms"] > 10]
    names = [k for k, v in rows[0].items() if isinstance(v, dict)] if rows else []

    def mean(group: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
        values = [(r[key][sub] if sub else r[key]) for r in group if r.get(key) is not None]
        return statistics.mean(values) if values else float("nan")

    print(f"{len(rows)} seconds: {len(good)} with p99 <= 5 ms, {len(bad)} with p99 > 10 ms")
    print(f"{'mean per second':34} {'p99 <= 5 ms':>12} {'p99 > 10 ms':>12}")
    for key in ("p50_ms", "bare_p99_ms", "busy_cores", "steal_cores", "pressure_ms", "calibration_us"):
        print(f"{key:34} {mean(good, key):12.3f} {mean(bad, key):12.3f}")
    for name in names:
        for sub in ("cores", "waited_ms"):
            print(f"{name + ' ' + sub:34} {mean(good, name, sub):12.3f} {mean(bad, name, sub):12.3f}")
    for minute in range(len(rows) // 60 + 1):
        group = [r for r in rows if minute * 60 <= r["second"] < (minute + 1) * 60]
        if group:
            print(f"minute {minute + 1:3}: seconds over 10 ms {sum(r['p99_ms'] > 10 for r in group):3}, "
                  f"median p50 {statistics.median(r['p50_ms'] for r in group):6.2f} ms, "
                  f"median calibration {statistics.median(r['calibration_us'] for r in group):7.0f} µs, "
                  f"busy {mean(group, 'busy_cores'):.2f}, steal {mean(group, 'steal_cores'):.3f} cores")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_diagnosis", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--output", type=Path, help="write the rows here as JSON")
    args = parser.parse_args()
    result = run(args.seconds)
    if args.output:
        args.output.write_text(json.dumps(result))
    report(result["rows"])


if __name__ == "__main__":
    main()
