"""Helpers of the fault suite: the agent and the hub as real processes, paced publishers, store readers.

Everything started here is stopped by its context manager (SIGTERM, then SIGKILL as a fallback), so a failing
test leaves no process behind. Readers open the agent's outbox and the hub's store with their own SQLite
connections: both are in WAL mode, so reading while the owner writes (or after it was killed) is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import paho.mqtt.client as mqtt

from edge_agent.config import AgentConfig, load_config
from edge_protocol.deadletter import DeadLetter
from hub.config import HubConfig
from hub.service import serve as hub_serve
from tests.support.brokers import Mosquitto
from tests.support.running import cancel_and_wait, wait_for
from tests.support.service import free_port
from tests.support.toml import to_toml

BIN = Path(sys.executable).parent
DEVICE_LABEL = "edgefleet.device"
HANDLER_LABEL = "edgefleet.handler"


# -- processes --------------------------------------------------------------------------------------------


class Daemon:
    """A CLI daemon (edge-agent or hub) as a subprocess logging to a file; SIGKILL and restart on demand."""

    def __init__(self, argv: list[str], log_path: Path, ready_line: str) -> None:
        self._argv = argv
        self.log_path = log_path
        self._ready_line = ready_line
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log_text(self, *, since_start: bool = False) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[self._log_offset if since_start else 0 :].decode(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def start(self, timeout: float = 60.0) -> None:
        """Start and return once the ready line is logged (fail early if the process exits)."""
        assert not self.running, "already running"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(os.environ)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.starts += 1
        await wait_for(
            lambda: self._ready_line in self.log_text(since_start=True) or not self.running,
            timeout=timeout,
            what=f"{self._argv[0]} ready",
            detail=self.tail,
        )
        assert self.running, f"{self._argv[0]} exited with {self.returncode}:\n{self.tail()}"

    def kill(self) -> None:
        """SIGKILL, a crash: no cleanup of any kind runs."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(30)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (the graceful path); SIGKILL after ``timeout``. Returns the exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        return self._proc.returncode

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the running process, in KiB: current and peak resident memory."""
        fields: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(rest.split()[0])
        return fields["VmRSS"], fields["VmHWM"]


def agent_toml(
    *,
    device_id: str,
    data_dir: Path,
    device_port: int,
    cloud_port: int | None,
    prefix: str,
    handlers: list[dict[str, Any]],
    subscriptions: list[dict[str, Any]],
    cloud_extra: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An agent's config document (TOML for the CLI, or :func:`agent_config` for in-process agents);
    ``cloud_extra`` adds to its ``[cloud]`` table."""
    # The prefix also names the dead-letter topics on the device broker, so it is set even without a cloud.
    cloud: dict[str, Any] = {"enabled": False, "prefix": prefix}
    if cloud_port is not None:
        cloud = {"port": cloud_port, "prefix": prefix, "resend_after": "2s", "reconnect_max": "2s"}
        cloud.update(cloud_extra or {})
    return {
        "device_id": device_id,
        "data_dir": str(data_dir),
        "grace_period": "5s",
        **extra,
        "local_broker": {"port": device_port},
        "cloud": cloud,
        "handlers": handlers,
        "subscriptions": subscriptions,
    }


def agent_config(**kwargs: Any) -> AgentConfig:
    """:func:`agent_toml`'s config for ``tests.support.running.running_agent``."""
    return load_config(None, **agent_toml(**kwargs))


@contextlib.contextmanager
def agent_process(config: dict[str, Any], workdir: Path) -> Iterator[Daemon]:
    """``edge-agent run --config`` for ``config`` (not started yet); stopped at exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "agent.toml"
    path.write_text(to_toml(config))
    agent = Daemon(
        [str(BIN / "edge-agent"), "run", "--config", str(path)],
        workdir / "agent.log",
        f"agent {config['device_id']} running",
    )
    try:
        yield agent
    finally:
        agent.stop()


@contextlib.contextmanager
def hub_process(cloud: Mosquitto, prefix: str, workdir: Path) -> Iterator[tuple[Daemon, Path, str]]:
    """``hub serve --config`` on ``cloud`` (not started yet); yields (daemon, store path, API URL)."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "hub.db"
    port = free_port()
    path = workdir / "hub.toml"
    path.write_text(to_toml({
        "broker": {
            "host": cloud.host, "port": cloud.port, "prefix": prefix, "client_id": f"hub-{uuid.uuid4().hex[:8]}"
        },
        "store": {"url": f"sqlite:///{db}"},
        "api": {"host": "127.0.0.1", "port": port},
    }))
    hub = Daemon([str(BIN / "hub"), "serve", "--config", str(path)], workdir / "hub.log", "hub ready")
    try:
        yield hub, db, f"http://127.0.0.1:{port}"
    finally:
        hub.stop()


@contextlib.asynccontextmanager
async def running_hub(
    cloud: Mosquitto, prefix: str, db: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, asyncio.Task[None]]]:
    """The hub's ``serve()`` in-process (as in the end-to-end test); cancelled and awaited at exit."""
    port = free_port()
    config = HubConfig(
        broker={"host": cloud.host, "port": cloud.port, "prefix": prefix, "client_id": f"hub-{uuid.uuid4().hex[:8]}"},
        store={"url": f"sqlite:///{db}"},
        api={"host": "127.0.0.1", "port": port},
    )
    ready = asyncio.Event()
    task = asyncio.create_task(hub_serve(config, ready=ready), name="test.hub")
    try:
        await wait_for(lambda: ready.is_set() or task.done(), timeout=30, what="hub ready")
        if task.done():
            task.result()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            yield api, task
    finally:
        await cancel_and_wait(task, what="the hub")


# -- MQTT clients -----------------------------------------------------------------------------------------


def _client(broker: Mosquitto) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    return client


class DeadLetters:
    """A subscriber collecting the dead-letter records of one prefix on the device broker."""

    def __init__(self, broker: Mosquitto, prefix: str) -> None:
        self.records: list[DeadLetter] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(f"{prefix}/deadletter/#", qos=1)
        self._client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        record = DeadLetter.model_validate_json(msg.payload)
        with self._lock:
            self.records.append(record)

    def reasons(self) -> dict[bytes, str]:
        with self._lock:
            return {r.payload_bytes(): r.reason for r in self.records}

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextlib.contextmanager
def dead_letters(broker: Mosquitto, prefix: str) -> Iterator[DeadLetters]:
    collector = DeadLetters(broker, prefix)
    try:
        yield collector
    finally:
        collector.close()


def broker_stat(broker: Mosquitto, topic: str, timeout: float = 10.0) -> int:
    """One of mosquitto's ``$SYS`` figures, e.g. ``$SYS/broker/store/messages/count`` (messages held for sessions,
    acknowledged ones excluded); the broker needs ``sys_interval`` set (``Mosquitto(extra_config=[...])``)."""
    got: list[int] = []
    ready = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(int(float(msg.payload)))
        ready.set()

    client = _client(broker)
    client.on_message = on_message
    client.subscribe(topic)
    client.loop_start()
    try:
        assert ready.wait(timeout), f"no {topic} from the broker within {timeout:g}s"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def publish_all(broker: Mosquitto, messages: list[tuple[str, bytes]], *, retain: bool = False) -> None:
    """Publish at QoS 1 and return once the broker acknowledged every message."""
    client = _client(broker)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published(), "the broker did not acknowledge a publication"
    finally:
        client.disconnect()
        client.loop_stop()


class PacedPublisher:
    """Publishes ``messages`` at QoS 1 at about ``rate`` per second from its own thread (the load generator).

    ``acked`` counts the broker's PUBACKs; ``done`` is set once every message is acknowledged. A stream that
    should last as long as the test needs ends with :meth:`finish`: the published messages are then
    ``messages[:issued]``.
    """

    def __init__(self, broker: Mosquitto, messages: list[tuple[str, bytes]], rate: float) -> None:
        self._messages = messages
        self._rate = rate
        self._client = _client(broker)
        self._client.on_publish = self._on_publish
        self.acked = 0
        self.issued = 0
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test.publisher", daemon=True)

    def _on_publish(self, *_a: Any) -> None:
        self.acked += 1
        if self.acked >= len(self._messages):
            self.done.set()

    def _run(self) -> None:
        try:
            started = time.monotonic()
            for i, (topic, payload) in enumerate(self._messages):
                if self._stop.is_set():
                    return
                ahead = started + i / self._rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the load, not synchronisation
                self._client.publish(topic, payload, qos=1)
                self.issued = i + 1
        except BaseException as exc:  # reported by the test through .error
            self.error = exc

    def finish(self, timeout: float = 30.0) -> int:
        """Stop publishing and wait until the broker acknowledged everything issued; returns how many were."""
        self._stop.set()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self.acked < self.issued and time.monotonic() < deadline:
            time.sleep(0.05)  # polling paho's thread, which counts the PUBACKs
        assert self.acked == self.issued, f"the broker acknowledged {self.acked} of {self.issued} messages"
        return self.issued

    def __enter__(self) -> PacedPublisher:
        self._client.loop_start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.disconnect()
        self._client.loop_stop()


# -- readers ----------------------------------------------------------------------------------------------


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def integrity_check(path: Path) -> str:
    """``PRAGMA integrity_check`` of a SQLite file (opened read-write, as its owner would reopen it)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def outbox_pending(path: Path) -> int:
    with contextlib.closing(_read_only(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])


def outbox_results(path: Path) -> list[dict[str, Any]]:
    """The window results waiting in an outbox (its records' bodies)."""
    with contextlib.closing(_read_only(path)) as db:
        return [json.loads(body) for (body,) in db.execute("SELECT body FROM records ORDER BY seq")]


def outbox_losses(path: Path) -> dict[tuple[str, str], int]:
    with contextlib.closing(_read_only(path)) as db:
        return {(s, r): int(n) for s, r, n in db.execute("SELECT subscription, reason, count FROM losses")}


async def hub_device(api: httpx.AsyncClient, device: str) -> dict[str, Any]:
    """``GET /v1/devices/{device}``: the device as the hub shows it (reported counters, ``losses``, ``alarms``);
    empty before the hub has heard from it."""
    response = await api.get(f"/v1/devices/{device}")
    if response.status_code == 404:
        return {}
    response.raise_for_status()
    return dict(response.json())


async def reported_since(api: httpx.AsyncClient, device: str, since: float) -> dict[str, Any]:
    """:func:`hub_device` once the hub holds a reported state the agent made at ``since`` (its clock) or later;
    empty until then (an older report, e.g. the retained one from before a fault, does not count)."""
    shown = await hub_device(api, device)
    return shown if (shown.get("reported_at") or 0.0) >= since else {}


def hub_rows(path: Path, device: str) -> list[dict[str, Any]]:
    """Every stored window of ``device`` (window_id, group, window_start, events, fields), from the store."""
    if not path.exists():
        return []
    with contextlib.closing(_read_only(path)) as db:
        try:
            rows = db.execute(
                'SELECT window_id, "group", window_start, events, fields FROM aggregates WHERE device = ?', (device,)
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
    return [
        {"window_id": w, "group": g, "window_start": float(t), "events": int(e), "fields": json.loads(f)}
        for w, g, t, e, f in rows
    ]


class Totals:
    """Sums over stored windows: rows, distinct ids, events, and the count/sum/min/max of one field."""

    def __init__(self, rows: list[dict[str, Any]], field: str | None = None) -> None:
        self.rows = len(rows)
        self.distinct = len({r.get("window_id") or r["id"] for r in rows})  # store rows or outbox bodies
        self.events = sum(r["events"] for r in rows)
        states = [r["fields"][field] for r in rows if field and field in r["fields"]]
        self.count = sum(s["count"] for s in states)
        self.sum = math.fsum(s["sum"] for s in states)
        self.min = min((s["min"] for s in states), default=math.inf)
        self.max = max((s["max"] for s in states), default=-math.inf)

    def __repr__(self) -> str:
        return f"Totals(rows={self.rows}, distinct={self.distinct}, events={self.events}, count={self.count})"


def labelled_containers(client: docker.DockerClient, device_id: str, *, running_only: bool = False) -> list[Any]:
    return client.containers.list(all=not running_only, filters={"label": f"{DEVICE_LABEL}={device_id}"})


# -- workloads --------------------------------------------------------------------------------------------

SENTINEL_GROUP = "topic[2]=end"


def temperature_events(
    prefix: str, n: int, *, seed: int, sensors: int = 4
) -> tuple[list[tuple[str, bytes]], list[float]]:
    """``n`` readings {"f": F} on ``{prefix}/sensors/sN/temperature``, and the Celsius value temp-c makes of each."""
    import random

    rng = random.Random(seed)
    messages, celsius = [], []
    for i in range(n):
        f = round(rng.uniform(-40.0, 120.0), 3)
        messages.append((f"{prefix}/sensors/s{i % sensors}/temperature", json.dumps({"f": f}).encode()))
        celsius.append((f - 32.0) * 5.0 / 9.0)
    return messages, celsius


def sentinel_event(prefix: str) -> tuple[str, bytes]:
    """One reading in a group of its own (``topic[2]=end``), published after everything else.

    A dispatcher takes events in order and closes every window whose end the watermark passed in one commit, so
    once the sentinel's window is stored every earlier event's window is at least in the outbox.
    """
    return f"{prefix}/sensors/end/temperature", b'{"f": 32.0}'


def temps_subscription(prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "temps",
        "topic": f"{prefix}/sensors/+/temperature",
        "handler": "temp-c",
        "window": {"size": "1s"},
        "stats": ["count", "sum", "min", "max", "mean"],
        "group_by": ["topic[2]"],
        **extra,
    }


TEMP_C = {"name": "temp-c", "image": "edgefleet/temp-c:dev"}


def scrape(url: str, sample: str, **labels: str) -> float | None:
    """One sample of a Prometheus endpoint (e.g. the agent's ``[status] listen``); None when absent or down."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


class LinkProxy:
    """A TCP proxy in front of a broker that the test can cut, take down and bring back, or black-hole.

    ``cut()`` closes every connection (both sides) and accepts new ones. ``sever()`` is a link down: it stops
    listening (connection attempts are refused) and cuts; ``restore()`` listens again on the same port.

    Black-holed (``blackholed = True``), the client-to-broker direction is swallowed: the broker keeps delivering
    events and an agent keeps committing them, but its PUBACKs never arrive; killing the agent then leaves
    committed events unacknowledged, which the broker delivers again (DUP) to the next agent process. That is the
    window between commit and acknowledgement where a crash makes duplicates, held open for as long as the test
    wants.
    """

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self._target = (broker.host, broker.port)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.blackholed = False
        self.dropped_bytes = 0
        self.connections = 0
        """Client connections relayed to the broker so far (each reconnection counts)."""
        self.port = 0

    async def __aenter__(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sever()

    @property
    def up(self) -> bool:
        return self._server is not None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        if not self.up:  # severed while this connection was being set up
            writer.close()
            up_writer.close()
            return
        self.connections += 1
        self._conns |= {writer, up_writer}
        for task in (self._pump(reader, up_writer, upstream=True), self._pump(up_reader, writer, upstream=False)):
            t = asyncio.create_task(task, name="test.proxy.pump")
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and self.blackholed:
                    self.dropped_bytes += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()

    async def cut(self) -> None:
        """Close every connection (both sides) now; new ones are accepted."""
        for writer in list(self._conns):
            writer.close()
        self._conns.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def sever(self) -> None:
        """The link goes down: connection attempts are refused from now on and every connection is closed."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.cut()
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """The link comes back: listen again on the same port."""
        assert self._server is None, "the link is up"
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", self.port)
