"""Issue 15: two ``hub serve`` processes on one PostgreSQL database and one broker run the rollout controller one
at a time. The replica holding the ``rollouts`` lease is SIGKILLed mid-rollout; the other takes over within the
lease's TTL and one renewal period, and the rollout completes with every step run once: no device assigned twice
or skipped, each step begun once across both replicas' logs.

Simulated devices (``hub simulate``) report whatever digest they are told to run as healthy. Skipped without
EDGEFLEET_TEST_POSTGRES_URL; each test has a database of its own.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from hub.db.tables import RolloutDeviceRow
from hub.desired.keys import PRIVATE_NAME, PUBLIC_NAME, init_keys
from hub.leases import RENEW_EVERY, TTL
from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto
from tests.support.daemons import BIN, Daemon
from tests.support.postgres_db import fresh_database, server_url
from tests.support.running import wait_for
from tests.support.toml import to_toml

pytestmark = pytest.mark.integration

TOKEN = "replicas-token"
OLD = "127.0.0.1:5000/temp-c@sha256:" + "a" * 64
NEW = "127.0.0.1:5000/temp-c@sha256:" + "b" * 64
TAKEOVER_BOUND = TTL + RENEW_EVERY + 2.0
"""A standby runs the controller within the TTL and one attempt of the holder's death (+2 s for a loaded host)."""


@dataclass
class Replica:
    name: str
    daemon: Daemon
    url: str

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10, **kw)

    def health(self) -> dict[str, Any] | None:
        if not self.daemon.running:
            return None
        try:
            resp = self.get("/healthz")
        except httpx.HTTPError:
            return None
        return dict(resp.json()) if resp.status_code == 200 else None

    def holds(self) -> bool:
        health = self.health()
        return health is not None and "rollouts" in health["leases"]

    def metric(self, sample: str, **labels: str) -> float:
        text = self.get("/metrics").text
        want = sample + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@contextlib.contextmanager
def replicas(cloud: Mosquitto, prefix: str, store_url: str, keys: Path, tmp: Path) -> Iterator[list[Replica]]:
    """Two ``hub serve`` daemons (not started) on one store and broker; stopped at exit."""
    out = []
    for name in ("one", "two"):
        port = free_port()
        work = tmp / name
        work.mkdir()
        (work / "hub.toml").write_text(to_toml({
            "broker": {"host": cloud.host, "port": cloud.port, "prefix": prefix, "client_id": f"hub-{name}-{prefix}"},
            "store": {"url": store_url},
            "api": {"host": "127.0.0.1", "port": port, "token": TOKEN},
            "signing": {"private_key": str(keys / PRIVATE_NAME)},
        }))  # fmt: skip
        daemon = Daemon([str(BIN / "hub"), "serve", "--config", str(work / "hub.toml")], work / "hub.log", "hub ready")
        out.append(Replica(name, daemon, f"http://127.0.0.1:{port}"))
    try:
        yield out
    finally:
        for replica in out:
            replica.daemon.stop()


@contextlib.contextmanager
def simulated(cloud: Mosquitto, prefix: str, api: str, keys: Path, tmp: Path, devices: int) -> Iterator[Daemon]:
    sim = Daemon([
        str(BIN / "hub"), "simulate", "--devices", str(devices), "--device-prefix", "sim",
        "--broker", f"{cloud.host}:{cloud.port}", "--prefix", prefix, "--hub-key", str(keys / PUBLIC_NAME),
        "--labels", "site=lab", "--api", api, "--token", TOKEN, "--window", "2s", "--rate", "1",
        "--report-every", "0.5s", "--event-rate", "40", "--every", "30s",
    ], tmp / "simulate.log", "")  # fmt: skip
    try:
        yield sim
    finally:
        sim.stop()


async def _run(cloud: Mosquitto, tmp: Path, *, devices: int, kills: int) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    keys = init_keys(tmp / "keys").private_path.parent
    with fresh_database(server_url()) as store_url, replicas(cloud, prefix, store_url, keys, tmp) as hubs:
        for hub in hubs:
            await hub.daemon.start()
        await wait_for(lambda: sum(h.holds() for h in hubs) == 1, timeout=20, what="one replica holds the lease")
        holder = next(h for h in hubs if h.holds())
        standby = next(h for h in hubs if h is not holder)
        with simulated(cloud, prefix, standby.url, keys, tmp, devices) as sim:
            await sim.start()

            def labelled() -> bool:
                return len(standby.get("/v1/devices", params={"label": "site=lab"}).json()) == devices

            await wait_for(labelled, timeout=30, what="the simulated devices labelled", detail=sim.tail)
            api = httpx.Client(base_url=standby.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            with api:
                assert api.post("/v1/handlers", json={"name": "temp-c", "image": OLD}, params={"version": "1.0"})\
                    .status_code == 201  # fmt: skip
                spec = {"name": "temps", "topic": "sensors/#", "handler": "temp-c", "window": {"size": "1s"}}
                assert api.post("/v1/subscriptions", json={"target": ["site=lab"], "spec": spec}).status_code == 201
                resp = api.post("/v1/handlers/temp-c/releases", json={"version": "1.1", "image": NEW})
                assert resp.status_code == 201, resp.text
                before = {d["id"]: d["desired_version"] for d in api.get("/v1/devices").json()}
                body = {"handler": "temp-c", "release": "1.1", "target": ["site=lab"], "canary": 1, "batch": 1,
                        "soak": "1s", "health_timeout": "60s"}  # fmt: skip
                resp = api.post("/v1/rollouts", json=body)
                assert resp.status_code == 201, resp.text
                rid = resp.json()["id"]
            steps = devices

            def live() -> Replica:
                return next(h for h in hubs if h.daemon.running)

            def rollout() -> dict[str, Any]:
                result: dict[str, Any] = live().get(f"/v1/rollouts/{rid}").json()
                return result

            for kill in range(kills):
                # Mid-rollout: once the step after this kill's has begun.
                def begun(step: int = 2 + kill) -> bool:
                    return int(rollout()["step"]) >= step

                await wait_for(begun, timeout=60, what=f"step {2 + kill} begun")
                assert rollout()["state"] == "running"
                # Exactly one replica ticks: the standby's controller never ran.
                assert holder.metric("edgefleet_hub_rollout_ticks_total") > 0
                assert holder.metric("edgefleet_hub_lease_held", name="rollouts") == 1
                assert standby.metric("edgefleet_hub_lease_held", name="rollouts") == 0
                ticks = standby.metric("edgefleet_hub_rollout_ticks_total")
                assert ticks == 0, f"the standby ticked {ticks:g} times"
                holder.daemon.kill()
                killed_at = time.monotonic()
                await wait_for(standby.holds, timeout=TAKEOVER_BOUND + 5, what="the standby takes the lease")
                took = time.monotonic() - killed_at
                assert took <= TAKEOVER_BOUND, f"takeover after {took:.1f}s"

                def ticking(new: Replica = standby, before: float = ticks) -> bool:
                    return new.metric("edgefleet_hub_rollout_ticks_total") > before

                await wait_for(ticking, what="the new holder ticks")
                if kill + 1 < kills:
                    await holder.daemon.start()  # back, as the standby
                    assert not holder.holds()
                holder, standby = standby, holder

            def finished() -> bool:
                return rollout()["state"] not in ("running", "paused")

            await wait_for(finished, timeout=90, interval=0.5, what="the rollout to finish")
            done = rollout()
            assert done["state"] == "completed", done
            assert done["passed"] == done["planned"] == devices
            assert len(done["steps"]) == steps

            # Every step ran once, none skipped: each device assigned exactly once (one assignment change, one
            # new desired version), the steps assigned in order, each logged once across both replicas.
            engine = create_engine(store_url)
            try:
                with engine.connect() as conn:
                    rows = conn.execute(
                        select(RolloutDeviceRow.device, RolloutDeviceRow.step, RolloutDeviceRow.change_seq,
                               RolloutDeviceRow.assigned_at, RolloutDeviceRow.status)
                        .where(RolloutDeviceRow.rollout_id == rid)
                    ).all()  # fmt: skip
            finally:
                engine.dispose()
            assert sorted(r.step for r in rows) == list(range(steps))
            assert all(r.change_seq == 1 for r in rows), rows
            assert all(r.status == "passed" for r in rows), rows
            by_step = sorted(rows, key=lambda r: r.step)
            assert [r.assigned_at for r in by_step] == sorted(r.assigned_at for r in by_step)
            after = {d["id"]: d["desired_version"] for d in live().get("/v1/devices").json()}
            assert {d: after[d] - before[d] for d in before} == dict.fromkeys(before, 1)

            logs = "".join(h.daemon.log_text() for h in hubs)
            assigned = re.findall(rf"rollout {rid}: (\S+) assigned", logs)
            assert sorted(assigned) == sorted(before), assigned
            started = re.findall(rf"rollout {rid} of temp-c: step (\d+) of {steps}", logs)
            assert sorted(int(s) for s in started) == list(range(2, steps + 1)), started
            assert len(re.findall(rf"rollout {rid} of temp-c: completed", logs)) == 1
            epochs = re.findall(r"lease rollouts acquired by \S+ \(epoch (\d+)\)", logs)
            assert sorted(int(e) for e in epochs) == list(range(1, kills + 2))  # one tenure per holder


async def test_a_killed_controller_replica_is_replaced_and_the_rollout_completes(
    cloud_broker: Mosquitto, tmp_path: Path
) -> None:
    await _run(cloud_broker, tmp_path, devices=4, kills=1)


@pytest.mark.slow
async def test_the_controller_survives_repeated_kills_of_its_holder(cloud_broker: Mosquitto, tmp_path: Path) -> None:
    await _run(cloud_broker, tmp_path, devices=8, kills=3)
