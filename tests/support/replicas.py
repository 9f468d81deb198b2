"""Several ``hub serve`` processes on one store and one broker, and what a simulated fleet made, to compare
with what they stored.

- :func:`hub_replicas`: N ``hub serve`` daemons (not started), each with its config, API port and log in its
  own folder, stopped at exit; :class:`Replica` reads their API and ``/metrics``.
- :func:`running_fleet`: the fleet simulator in a task of the test (so the test reads each device's outbox).
- :func:`made_windows` / :func:`stored_windows`: per window id, its events and content hash, as the devices
  made them and as the store holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, select

from edge_protocol.messages import SequencedResult
from fleet_simulator.fleet import DeviceStats, Fleet, SimConfig
from fleet_simulator.messages import RecordTemplate, SimSubscription
from hub.db.tables import AggregateRow
from hub.ingest.conflicts import content_hash
from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto
from tests.support.daemons import BIN, Daemon
from tests.support.running import cancel_and_wait, wait_for
from tests.support.toml import to_toml


@dataclass
class Replica:
    """One ``hub serve`` of several: its daemon and its API."""

    name: str
    daemon: Daemon
    url: str
    token: str | None = None

    def get(self, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=10, **kw)

    def metric(self, sample: str, **labels: str) -> float:
        """A sample of this replica's ``/metrics`` (0 when absent)."""
        for line in self.get("/metrics").text.splitlines():
            name, _, rest = line.partition("{")
            if not rest:
                name, _, rest = line.partition(" ")
                if name == sample and not labels:
                    return float(rest)
                continue
            body, _, value = rest.rpartition("} ")
            pairs = dict(pair.split("=", 1) for pair in body.split(",") if pair)
            if name == sample and {k: v.strip('"') for k, v in pairs.items()} == labels:
                return float(value)
        return 0.0


@contextlib.contextmanager
def hub_replicas(
    cloud: Mosquitto,
    prefix: str,
    store_url: str,
    tmp: Path,
    count: int,
    *,
    token: str | None = None,
    **sections: dict[str, Any],
) -> Iterator[list[Replica]]:
    """``count`` ``hub serve`` daemons (not started) on one store and broker; stopped at exit. ``sections``
    are further config sections (``signing={...}``)."""
    out = []
    for i in range(count):
        name = f"replica-{i}"
        port = free_port()
        work = tmp / name
        work.mkdir(parents=True, exist_ok=True)
        api: dict[str, Any] = {"host": "127.0.0.1", "port": port}
        if token is not None:
            api["token"] = token
        (work / "hub.toml").write_text(to_toml({
            "broker": {"host": cloud.host, "port": cloud.port, "prefix": prefix,
                       "client_id": f"hub-{name}-{uuid.uuid4().hex[:6]}"},
            "store": {"url": store_url},
            "api": api,
            **sections,
        }))  # fmt: skip
        daemon = Daemon([str(BIN / "hub"), "serve", "--config", str(work / "hub.toml")], work / "hub.log", "hub ready")
        out.append(Replica(name, daemon, f"http://127.0.0.1:{port}", token))
    try:
        yield out
    finally:
        for replica in out:
            replica.daemon.stop()


class RunningFleet:
    """The simulator's fleet running in a task of this test; :meth:`wait` fails at once if the fleet stopped."""

    def __init__(self, sim: Fleet, task: asyncio.Task[dict[str, Any]]) -> None:
        self.sim = sim
        self.task = task
        self.final: dict[str, Any] = {}
        """The fleet's closing summary (what ``Fleet.run`` returned), once the block has ended."""
        self.final_stats: list[DeviceStats] = []
        """Every device's stats as the fleet stopped, once the block has ended."""

    @property
    def stats(self) -> Any:
        return self.sim.stats

    async def wait(
        self, condition: Callable[[], bool], *, timeout: float, what: str, detail: Callable[[], object] | None = None
    ) -> None:
        def check() -> bool:
            if self.task.done():
                self.task.result()  # raises what stopped it
                raise AssertionError("the fleet stopped")
            return condition()

        await wait_for(check, timeout=timeout, interval=0.1, what=what, detail=detail)


@contextlib.asynccontextmanager
async def running_fleet(config: SimConfig) -> AsyncIterator[RunningFleet]:
    """``Fleet(config).run`` in a task until the block ends; then stopped (devices publish offline and leave)."""
    sim = Fleet(config)
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop, lambda _line: None, every=5.0), name="test.fleet")
    running = RunningFleet(sim, task)
    try:
        yield running
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=60)
        if not done:
            await cancel_and_wait(task, what="the fleet")
            raise AssertionError("the fleet did not stop within 60s")
        running.final_stats = sim.device_stats()
        running.final = task.result()


@dataclass(frozen=True, slots=True)
class Window:
    events: int
    content_hash: str


def made_windows(sim: Fleet, device: str, through: int | None = None) -> dict[str, Window]:
    """Window id -> (events, content hash) of each record ``device`` made (up to sequence ``through``), rendered
    again as the device sent it. Only for devices on the simulator's synthetic stream (no desired state)."""
    config = sim.config
    sub = SimSubscription.synthetic(config.subscription, config.window)
    templates: dict[int, RecordTemplate] = {}
    out = {}
    for seq, window_id, events in sim.devices[_index(sim, device)].outbox.ledger.records(through):
        template = templates.get(events)
        if template is None:
            template = templates[events] = RecordTemplate(device, sub, events)
        _head, group, start, _part = window_id.rsplit("/", 3)
        record = SequencedResult.model_validate_json(template.render(seq, int(group[1:]), float(start)))
        assert record.result.id == window_id, (record.result.id, window_id)
        out[window_id] = Window(events, content_hash(record.result))
    return out


def _index(sim: Fleet, device: str) -> int:
    return next(i for i, d in enumerate(sim.devices) if d.id == device)


def stored_windows(store_url: str) -> dict[str, dict[str, Window]]:
    """Device -> window id -> (events, content hash) of every stored window."""
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(AggregateRow.device, AggregateRow.window_id, AggregateRow.events, AggregateRow.content_hash)
            ).all()
    finally:
        engine.dispose()
    out: dict[str, dict[str, Window]] = {}
    for device, window_id, events, digest in rows:
        out.setdefault(device, {})[window_id] = Window(events, digest or "")
    return out
