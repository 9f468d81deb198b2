"""Process-level helpers: CPU time and memory from /proc, the chunked C publisher, helper subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
Sample = TypeVar("Sample")
CHUNK = 50_000  # lines per mosquitto_pub: QoS 1 message ids wrap at 65,535


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (from /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def calibration_us() -> float:
    """The CPU time of a fixed 100,000-step loop, in µs. When it rises, the same instructions cost more CPU: on a
    shared host another guest is using the core's other thread or its caches, which the guest cannot see as
    steal time, and every process on the machine is slowed alike."""
    started = time.thread_time_ns()
    total = 0
    for step in range(100_000):
        total += step * step
    return (time.thread_time_ns() - started) / 1000


@dataclass
class PeriodicSampler(Generic[Sample]):
    """Takes ``_sample()`` every ``interval`` s in a thread, from ``__enter__`` to ``__exit__``, into ``samples``
    (a sample whose process is gone is skipped)."""

    pid: int
    interval: float = 0.2
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    thread_name: ClassVar[str] = "bench.sampler"

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append(self._sample())
            self._stop.wait(self.interval)

    def _sample(self) -> Sample:
        raise NotImplementedError


@dataclass
class MachineSampler(PeriodicSampler[tuple[float, float, float]]):
    """Every ``interval`` s: (time, ``calibration_us``, the CPU seconds of process ``pid`` so far)."""

    interval: float = 5.0
    thread_name: ClassVar[str] = "bench.machine"

    def _sample(self) -> tuple[float, float, float]:
        return time.time(), calibration_us(), cpu_seconds(self.pid)

    def per_interval(self, start: float, length: float, count: int) -> list[dict[str, float]]:
        """For each of ``count`` intervals of ``length`` s from ``start``: the median calibration and the
        process's CPU in cores; an interval without two samples gets neither."""
        out: list[dict[str, float]] = []
        for index in range(count):
            lo, hi = start + index * length, start + (index + 1) * length
            inside = [s for s in self.samples if lo <= s[0] < hi]
            if len(inside) < 2:
                out.append({})
                continue
            calibrations = sorted(c for _t, c, _cpu in inside)
            (t0, _c0, cpu0), (t1, _c1, cpu1) = inside[0], inside[-1]
            out.append({
                "calibration_us": round(calibrations[len(calibrations) // 2]),
                "agent_cores": round((cpu1 - cpu0) / (t1 - t0), 3),
            })  # fmt: skip
        return out


@dataclass
class RssSampler(PeriodicSampler[tuple[float, int]]):
    """Samples a process's VmRSS (time, KiB); ``max_kib`` is the highest sample seen."""

    thread_name: ClassVar[str] = "bench.rss"

    def _sample(self) -> tuple[float, int]:
        return time.time(), memory_kib(self.pid)["VmRSS"]

    @property
    def max_kib(self) -> int:
        return max((kib for _, kib in self.samples), default=0)


def payload(seq: int) -> bytes:
    """A sensor-like event: ~30 bytes of JSON with two numeric fields."""
    return b'{"seq":%d,"temp":%.2f}' % (seq, 18.0 + (seq % 700) / 100)


def publish_burst(
    host: str, port: int, topic: str, count: int, qos: int, *, parallel: bool = False
) -> tuple[float, float, int]:
    """Publish ``count`` events as fast as the C client can, in chunks; (start, end, payload bytes).

    ``parallel``: one publisher per chunk, all at once (filling a backlog fast; the events' order is then lost).
    """
    bodies = []
    sent = nbytes = 0
    while sent < count:
        n = min(CHUNK, count - sent)
        body = b"".join(payload(sent + i) + b"\n" for i in range(n))
        nbytes += len(body) - n
        bodies.append(body)
        sent += n
    command = ["mosquitto_pub", "-h", host, "-p", str(port), "-t", topic, "-q", str(qos), "-l", "-M", "65535"]
    started = time.time()
    if not parallel:
        for body in bodies:
            subprocess.run(command, input=body, check=True, timeout=300)
        return started, time.time(), nbytes
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE) for _ in bodies]
    writers = [
        threading.Thread(target=p.communicate, args=(b,), daemon=True) for p, b in zip(procs, bodies, strict=True)
    ]
    for writer in writers:
        writer.start()
    for proc, writer in zip(procs, writers, strict=True):
        writer.join(300)
        if proc.wait(10) != 0:
            raise RuntimeError(f"mosquitto_pub exited with {proc.returncode}")
    return started, time.time(), nbytes


DEVICE_CONF = REPO / "configs" / "mosquitto" / "device.conf"
_LIMITS = ("set_tcp_nodelay", "persistent_client_expiration", "max_inflight_messages", "max_queued_messages",
           "max_queued_bytes")  # fmt: skip


def device_broker_limits(*, min_queued: int = 0, sys_interval: int | None = None) -> list[str]:
    """The shipped device broker's session, in-flight and queue settings (configs/mosquitto/device.conf), as
    ``Mosquitto(extra_config=...)`` lines (they override its unlimited defaults): the agent is measured against
    the broker it ships with. ``min_queued`` raises max_queued_messages for a preloaded backlog that large."""
    lines = []
    for raw in DEVICE_CONF.read_text().splitlines():
        key, _, value = raw.strip().partition(" ")
        if key in _LIMITS:
            if key == "max_queued_messages" and min_queued > int(value):
                value = str(min_queued)
            lines.append(f"{key} {value}")
    if sys_interval is not None:
        lines.append(f"sys_interval {sys_interval}")
    return lines


def broker_counter(host: str, port: int, topic: str = "$SYS/broker/publish/messages/dropped",
                   timeout: float = 12.0) -> int | None:  # fmt: skip
    """A mosquitto $SYS counter (retained, refreshed every sys_interval). mosquitto publishes it only once it
    changed from 0: 0 when the broker's uptime came but the counter did not; None when $SYS said nothing."""
    import paho.mqtt.client as mqtt

    got: dict[str, int] = {}
    uptime = "$SYS/broker/uptime"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_connect = lambda c, *_a: c.subscribe([(topic, 0), (uptime, 0)])
    client.on_message = lambda _c, _u, msg: got.__setitem__(msg.topic, int(msg.payload.split()[0]))
    try:
        client.connect(host, port)
        deadline = time.monotonic() + timeout
        while topic not in got and time.monotonic() < deadline:
            client.loop(0.1)
            if uptime in got and time.monotonic() > deadline - timeout + 3:  # two sys_intervals of 1 s passed
                break
    finally:
        client.disconnect()
    if topic in got:
        return got[topic]
    return 0 if uptime in got else None


class Helper:
    """A ``python -m bench.clients ...`` subprocess (or ``command``) that reports JSON lines on stdout."""

    def __init__(self, *args: str, command: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "bench.clients"]), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self._what = " ".join([Path(command[0]).name, *command[1:], *args] if command else args)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, name="bench.helper-out", daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; TimeoutError when none arrives in time (or the helper exited)."""
        what = self._what
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"helper {what} said nothing within {timeout:g}s") from None
        if not line:
            self._lines.put("")  # keep reporting the end to later reads
            raise TimeoutError(f"helper {what} exited with {self.proc.wait()}")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Helper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an unsorted list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def machine_busy_seconds() -> float:
    """CPU seconds the machine was not ours to use: busy on every core, every process, plus VM steal time."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICK


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    box = [time.monotonic()]
    yield box
    box.append(time.monotonic() - box[0])
