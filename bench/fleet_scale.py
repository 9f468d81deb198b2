"""``python -m bench --fleet [--fleet-devices N]``: the hub at fleet scale, one to three replicas (issue 15).

For each setup -- one ``hub serve`` on SQLite, one on PostgreSQL, two and three on one PostgreSQL database --
with ``N`` simulated devices (default 10,000; statuses, reported states every 10 s and aggregates) in several
``hub simulate`` processes (at most :data:`PER_SIMULATOR` devices each) on one fresh mosquitto
(``max_connections -1``, open-files limit raised):

- capacity: every device floods ``backlog`` windows at once (:data:`OFFERED` results/s worth of windows each);
  results stored per second from the first stored result to the last (the replicas' ``stored_at``);
- lag at a fixed offered rate: the devices offer :data:`OFFERED` results/s in total (10 s windows, one phase per
  device); the lag from each result's first publish (the simulators' ``--record`` files) to its ``stored_at``,
  p50/p99 over the results first published in the measured window, those not stored by the end counted with
  their wait so far (a lower bound, shown as such);
- beside them the ceiling: a bare paho subscriber on the hub's shared filter counting the capacity stream, and
  each simulator's own send rate.

PostgreSQL is the test cluster (``EDGEFLEET_TEST_POSTGRES_URL``, else ``scripts/postgres.sh start``), a database
created per setup and dropped after it. Everything runs on this machine: on 2 cores the replicas, PostgreSQL,
the broker and the simulators share them, which the figures show (``machine_busy_cores``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.hub import broker
from bench.hub_procs import HUB, Simulator, close_all, nofile, stop_all
from bench.procs import REPO, Helper, cpu_seconds, percentile
from scripts.loopback import free_port
from tests.support.postgres_db import fresh_database

OFFERED = 20_000.0
"""Results per second the whole fleet offers (the hub's target): per device OFFERED / devices."""
WINDOW = 10.0
PER_SIMULATOR = 2_500
"""Devices per ``hub simulate`` process (one process offers about 95,000 results/s on 1.2 cores)."""
SETUPS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 3))
SHARED = "$share/hub/edgefleet/devices/+/aggregates"


def postgres_url() -> str:
    url = os.environ.get("EDGEFLEET_TEST_POSTGRES_URL")
    if url:
        return url
    out = subprocess.run([str(REPO / "scripts" / "postgres.sh"), "start"], capture_output=True, text=True, check=True)
    found = re.search(r"EDGEFLEET_TEST_POSTGRES_URL=(\S+)", out.stdout)
    if found is None:
        raise RuntimeError(f"no PostgreSQL server: {out.stderr.strip()}")
    return found.group(1)


@contextlib.contextmanager
def store(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh store's URL: a SQLite file in ``tmp``, or a new PostgreSQL database dropped at exit."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'hub.db'}"
        return
    with fresh_database(postgres_url()) as url:
        yield url


class Replicas:
    """``count`` ``hub serve`` processes on ``url``, each with its config and log in ``tmp``."""

    def __init__(self, tmp: Path, broker_port: int, url: str, count: int) -> None:
        self.url = url
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.engine = create_engine(url)
        try:
            self._start(tmp, broker_port, count)
        except BaseException:
            self.close()
            raise

    def _start(self, tmp: Path, broker_port: int, count: int) -> None:
        for i in range(count):
            port = free_port()
            config, log = tmp / f"hub-{i}.toml", tmp / f"hub-{i}.log"
            config.write_text("\n".join([
                "[broker]", 'host = "127.0.0.1"', f"port = {broker_port}", f'client_id = "hub-fleet-{i}"',
                "[store]", f'url = "{self.url}"', "[api]", 'host = "127.0.0.1"', f"port = {port}",
            ]) + "\n")  # fmt: skip
            self.logs.append(log)
            with log.open("wb") as out:
                self.procs.append(subprocess.Popen([HUB, "serve", "--config", str(config)], stdout=out, stderr=out))
            # One at a time: the first migrates the fresh schema.
            deadline = time.monotonic() + 60
            while b"hub ready" not in log.read_bytes():
                if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"hub serve did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stored(self) -> tuple[int, float | None, float | None]:
        """(results stored, first and last ``stored_at``)."""
        with self.engine.connect() as conn:
            count, first, last = conn.execute(
                text("SELECT count(*), min(stored_at), max(stored_at) FROM aggregates")
            ).one()
        return int(count), first, last

    def stored_at(self) -> dict[str, float]:
        with self.engine.connect() as conn:
            return {w: float(at) for w, at in conn.execute(text("SELECT window_id, stored_at FROM aggregates"))}

    def devices(self) -> int:
        """Devices the hubs know. Counted in the store, not through ``GET /v1/devices``: that call renders all
        10,000 devices, and asked every second it took 30% of the hub's time away from the stream measured."""
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM devices")).scalar_one())

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.engine.dispose()


@contextlib.contextmanager
def simulators(port: int, devices: int, *args: str, record: list[Path] | None = None) -> Iterator[list[Simulator]]:
    """``devices`` in ``hub simulate`` processes of at most :data:`PER_SIMULATOR`, each stopped at exit whatever
    happened (one that failed to start included); ``record``: each one's ``--record`` file."""
    sims: list[Simulator] = []
    try:
        for i, first in enumerate(range(0, devices, PER_SIMULATOR)):
            count = min(PER_SIMULATOR, devices - first)
            extra = ("--record", str(record[i])) if record is not None else ()
            sims.append(Simulator(port, count, "--device-prefix", f"f{i}", *args, *extra))
        yield sims
    finally:
        close_all(sims)


def record_files(tmp: Path, devices: int) -> list[Path]:
    return [tmp / f"published-{i}.tsv" for i in range(-(-devices // PER_SIMULATOR))]


def startup(devices: int) -> float:
    """Seconds for simulators of ``devices`` to connect (500 devices/s each, slower on a busy machine)."""
    return 60.0 + min(devices, PER_SIMULATOR) / 20


def stream_args(devices: int) -> list[str]:
    rate = OFFERED / devices
    return ["--rate", f"{rate:g}", "--window", f"{WINDOW:g}s"]


def ceiling(devices: int, backlog: int) -> dict[str, Any]:
    """A bare paho subscriber on the shared filter counting the capacity stream."""
    want = round(OFFERED * WINDOW) * backlog
    with broker() as mq, Helper("aggsub", "--port", str(mq.port), "--topic", SHARED, "--qos", "1",
                                "--count", str(want)) as sub:  # fmt: skip
        sub.read(timeout=30)
        with simulators(mq.port, devices, *stream_args(devices), "--backlog", str(backlog),
                        "--resend-after", "600s") as sims:  # fmt: skip
            done = sub.read(timeout=startup(devices) + 60 + want / 2000)
            finals = stop_all(sims)
    seconds = done["last"] - done["first"]
    return {
        "records": done["records"],
        "rate": done["records"] / seconds if seconds > 0 else None,
        "publisher_rates": [round(f["sent"] / max(1e-9, f["seconds"])) for f in finals],
    }


def capacity(kind: str, replicas: int, devices: int, backlog: int) -> dict[str, Any]:
    """``replicas`` hubs draining ``backlog`` windows of every device: results stored per second."""
    want = round(OFFERED * WINDOW) * backlog
    with broker() as mq, tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, store(kind, Path(tmp)) as url:
        hubs = Replicas(Path(tmp), mq.port, url, replicas)
        try:
            with simulators(mq.port, devices, *stream_args(devices), "--backlog", str(backlog),
                            "--resend-after", "600s") as sims:  # fmt: skip
                count, first, end, hub_cpu = _drain(hubs, want)
                finals = stop_all(sims)
        finally:
            hubs.close()
    seconds = (end or 0.0) - (first or 0.0)
    return {
        "records": want,
        "stored": count,
        "seconds": round(seconds, 1),
        "rate": count / seconds if seconds > 0 else None,
        "hub_cpu_per_record_us": round(hub_cpu / max(1, count) * 1e6, 1),
        "publisher_rates": [round(f["sent"] / max(1e-9, f["seconds"])) for f in finals],
    }


def _drain(hubs: Replicas, want: int) -> tuple[int, float | None, float | None, float]:
    """Until ``want`` results are stored (or none came for 30 s): (stored, first and last ``stored_at``, hub CPU)."""
    cpu0 = hubs.cpu()
    deadline, last, progress = time.monotonic() + 120 + want / 1000, -1, time.monotonic()
    while (stored := hubs.stored()[0]) < want and time.monotonic() < deadline:
        if stored != last:
            last, progress = stored, time.monotonic()
        elif time.monotonic() - progress > 30:
            break  # stuck: report what was stored
        time.sleep(1.0)
    hub_cpu = hubs.cpu() - cpu0
    return (*hubs.stored(), hub_cpu)


def lag(kind: str, replicas: int, devices: int, seconds: float, warmup: float) -> dict[str, Any]:
    """``replicas`` hubs under :data:`OFFERED` results/s: stored/s and the publish -> stored lag."""
    with broker() as mq, tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, store(kind, Path(tmp)) as url:
        hubs = Replicas(Path(tmp), mq.port, url, replicas)
        records = record_files(Path(tmp), devices)
        try:
            with simulators(mq.port, devices, *stream_args(devices), "--resend-after", "120s",
                            record=records) as sims:  # fmt: skip
                until = time.monotonic() + startup(devices)
                ready = max(sim.wait_event("ready", timeout=until - time.monotonic())["at"] for sim in sims)
                deadline = time.monotonic() + 60 + devices / 50
                while hubs.devices() < devices and time.monotonic() < deadline:
                    time.sleep(1.0)
                known = time.time() - ready
                time.sleep(max(0.0, ready + warmup - time.time()))
                start, cpu0 = time.time(), hubs.cpu()
                time.sleep(seconds)
                end, hub_cpu = time.time(), hubs.cpu() - cpu0
                finals = stop_all(sims)
            quiet, last = time.monotonic() + 15, -1
            while (now := hubs.stored()[0]) != last and time.monotonic() < quiet:
                last = now
                time.sleep(1.0)
            stopped = time.time()
            stored_at = hubs.stored_at()
        finally:
            hubs.close()
        waits, missing = [], 0
        for path in records:
            for line in path.read_text().splitlines():
                window, _, at = line.partition("\t")
                published = float(at)
                if start <= published <= end:
                    got = stored_at.get(window)
                    missing += got is None
                    waits.append((stopped if got is None else got) - published)
    stored = sum(1 for at in stored_at.values() if start <= at <= end)
    return {
        "offered_rate": OFFERED,
        "rate": stored / (end - start),
        "p50_ms": percentile(waits, 50) * 1000,
        "p99_ms": percentile(waits, 99) * 1000,
        "lower_bound": missing > 0,
        "not_stored": missing,
        "hub_cpu_cores": round(hub_cpu / (end - start), 2),
        "devices_known_after_s": round(known, 1),
        "publisher_rates": [round(f["sent"] / max(1e-9, f["seconds"])) for f in finals],
        "ack_wait_p99_ms": max((f.get("ack_wait_p99_ms") or 0.0) for f in finals),
    }


def run(results: dict[str, Any], phase: Any, devices: int) -> None:
    """Every setup's capacity and lag, and the ceiling, under ``fleet.*``."""
    smoke = devices < 10_000
    seconds, warmup, backlog = (15.0, 10.0, 1) if smoke else (30.0, 15.0, 2)
    node = results.setdefault("fleet", {"devices": devices, "offered_rate": OFFERED, "backlog_windows": backlog})
    try:
        node["open_files"] = nofile(devices)
    except RuntimeError as exc:
        node["error"] = str(exc)
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_term)  # a killed bench still stops what it started
    try:
        phase(results, "fleet.ceiling", f"fleet ceiling: bare paho on {devices} devices' batches",
              _guarded(node, "ceiling", lambda: ceiling(devices, backlog)))  # fmt: skip
        for kind, replicas in SETUPS:
            key = f"{kind}_{replicas}"
            phase(results, f"fleet.capacity.{key}", f"fleet capacity: {replicas} hub(s) on {kind}, {devices} devices",
                  _guarded(node, key, partial(capacity, kind, replicas, devices, backlog)))  # fmt: skip
            phase(results, f"fleet.lag.{key}", f"fleet lag: {replicas} hub(s) on {kind}, {OFFERED:,.0f} results/s",
                  _guarded(node, key, partial(lag, kind, replicas, devices, seconds, warmup)))  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)
    one = node.get("capacity", {}).get("postgresql_1", {}).get("rate")
    two = node.get("capacity", {}).get("postgresql_2", {}).get("rate")
    if one and two:
        node["two_over_one"] = round(two / one, 2)


def _exit_on_term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _guarded(node: dict[str, Any], key: str, func: Callable[[], Any]) -> Callable[[], Any]:
    """``func``, then a check that it left none of its processes running: any child of ours still alive (a
    ``hub simulate``, ``hub serve``, mosquitto or helper a phase failed to stop) is killed and named under
    ``fleet.leftover``, so that one phase's failure does not weigh on the next ones."""

    def guarded() -> Any:
        try:
            return func()
        finally:
            for pid, command in _children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    node.setdefault("leftover", []).append(f"{key}: {command}")

    return guarded


def _children() -> list[tuple[int, str]]:
    """(pid, command line) of our live child processes, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text_ = stat.read_text()
            fields = text_[text_.rindex(")") + 2 :].split()
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(stat.parent.name), command.strip()))
    return found


def summary(results: dict[str, Any]) -> str:
    """The phase's figures as a few lines of text."""
    node = results.get("fleet", {})
    lines = [f"fleet: {node.get('devices')} devices, offered {node.get('offered_rate', 0):,.0f} results/s"]
    ceiling = node.get("ceiling", {})
    lines.append(f"  ceiling (bare paho, shared filter): {_num(ceiling.get('rate'))} results/s; "
                 f"publishers {ceiling.get('publisher_rates')}")  # fmt: skip
    for kind, replicas in SETUPS:
        key = f"{kind}_{replicas}"
        cap, lag_ = node.get("capacity", {}).get(key, {}), node.get("lag", {}).get(key, {})
        bound = ">= " if lag_.get("lower_bound") else ""
        lines.append(
            f"  {replicas} x {kind:10}  capacity {_num(cap.get('rate'))}/s ({cap.get('stored')} of "
            f"{cap.get('records')}; {cap.get('error', '')})  at {_num(lag_.get('offered_rate'))}/s: stored "
            f"{_num(lag_.get('rate'))}/s, lag p50/p99 {bound}{_num(lag_.get('p50_ms'))}/{bound}"
            f"{_num(lag_.get('p99_ms'))} ms, hub {lag_.get('hub_cpu_cores')} cores; {lag_.get('error', '')}"
        )
    lines.append(f"  two replicas / one (PostgreSQL capacity): {node.get('two_over_one')}")
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else "-"
