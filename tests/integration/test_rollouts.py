"""Issue 4's acceptance: releases by digest from a real registry, staged rollouts gated on health and data,
automatic rollback, and a handler switch that loses and double-counts nothing -- three managed agents, the
real hub, the real engine and the Distribution registry."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from hub.desired.keys import init_keys
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import QUICK_CLOUD, QUICK_RESTARTS, agent_config
from tests.support.engine import remove_labelled
from tests.support.mqtt_clients import dead_letters
from tests.support.running import fleet_of, hub_config, serving_hub, wait_for

pytestmark = pytest.mark.integration

TOKEN = "rollout-token"


class Publisher:
    """Publishes readings at a steady rate from its own thread until stopped; counts what the broker took."""

    def __init__(self, broker: Mosquitto, topic: str, rate: float = 100.0) -> None:
        self.sent = 0
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        self._topic, self._period = topic, 1.0 / rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="test.publisher")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            info = self._client.publish(self._topic, orjson.dumps({"f": 50 + self.sent % 40}), qos=1)
            info.wait_for_publish(10)
            self.sent += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        self._client.disconnect()
        self._client.loop_stop()
        return self.sent


async def test_rollouts_update_gate_and_roll_back(
    device_broker: Mosquitto,
    cloud_broker: Mosquitto,
    release_images: dict[str, str],
    unreachable_registry_ref: str,
    docker_client: Any,
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    keys = init_keys(tmp_path / "keys")
    config = hub_config(
        cloud_broker, topic_prefix, tmp_path / "hub.db", token=TOKEN, signing={"private_key": keys.private_path}
    )
    devices = [f"{device_id}-{n}" for n in "abc"]
    configs = {
        dev: agent_config(
            device_id=dev, data_dir=tmp_path / dev, device_port=device_broker.port, cloud_port=cloud_broker.port,
            prefix=topic_prefix, handlers=[], subscriptions=[], hub_public_key_file=keys.public_path,
            cloud_extra={**QUICK_CLOUD, "report_interval": "0.5s"},
            runtime={**QUICK_RESTARTS, "health_timeout": "10s", "probation": "3s"},
        )
        for dev in devices
    }
    topic = f"{topic_prefix}/sensors/s1/temperature"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    deadletters = dead_letters(device_broker, topic_prefix)
    publisher: Publisher | None = None
    try:
        async with fleet_of(configs) as fleet, serving_hub(config) as (api, _hub), httpx.AsyncClient(
            base_url=api, headers=auth, timeout=30
        ) as http:

            async def known() -> bool:
                return {d["id"] for d in (await http.get("/v1/devices")).json()} >= set(devices)

            await wait_for(known, timeout=30, what="the hub knows the three devices")
            for dev in devices:
                assert (await http.put(f"/v1/devices/{dev}/labels", json={"set": {"site": "lab"}})).status_code == 200
            handler = {"name": "temp-c", "image": release_images["1.0"]}
            resp = await http.post("/v1/handlers", json=handler, params={"version": "1.0"})
            assert resp.status_code == 201, resp.text
            for version in ("1.1", "1.2-exit", "1.2-errors"):
                resp = await http.post("/v1/handlers/temp-c/releases",
                                       json={"version": version, "image": release_images[version]})
                assert resp.status_code in (200, 201), resp.text
            resp = await http.post("/v1/handlers/temp-c/releases",
                                   json={"version": "1.3-unreachable", "image": unreachable_registry_ref})
            assert resp.status_code in (200, 201), resp.text
            sub = {"target": ["site=lab"], "spec": {
                "name": "temps", "topic": topic, "handler": "temp-c", "window": {"size": "1s"},
                "stats": ["count", "sum", "max"],
            }}
            assert (await http.post("/v1/subscriptions", json=sub)).status_code == 201

            def runs(dev: str, ref: str) -> bool:
                specs = fleet.states[dev].pipeline.handler_specs if fleet.states[dev].pipeline else {}
                return "temp-c" in specs and specs["temp-c"].image == ref

            await wait_for(lambda: all(runs(d, release_images["1.0"]) for d in devices), timeout=90,
                           what="release 1.0 pulled and running on every device")

            async def rollout(release: str, **limits: Any) -> dict[str, Any]:
                body = {"handler": "temp-c", "release": release, "target": ["site=lab"], "canary": 1,
                        "batch": "50%", "soak": "3s", "health_timeout": "40s", **limits}
                resp = await http.post("/v1/rollouts", json=body)
                assert resp.status_code in (200, 201), resp.text
                rid = resp.json()["id"]

                async def finished() -> bool:
                    state = (await http.get(f"/v1/rollouts/{rid}")).json()["state"]
                    return bool(state not in ("running", "paused"))

                await wait_for(finished, timeout=240, interval=0.5, what=f"rollout of {release} to finish")
                result: dict[str, Any] = (await http.get(f"/v1/rollouts/{rid}")).json()
                return result

            # 1. A good release reaches every device while events flow; nothing lost, nothing twice.
            publisher = Publisher(device_broker, topic)
            done = await rollout("1.1")
            assert done["state"] == "completed", done
            assert all(runs(d, release_images["1.1"]) for d in devices)
            await asyncio.sleep(2)  # keep publishing on the new version a little
            published = publisher.stop()
            publisher = None

            async def stored(dev: str) -> list[dict[str, Any]]:
                rows: list[dict[str, Any]] = (await http.get(
                    "/v1/aggregates", params={"device": dev, "subscription": "temps", "limit": 10_000})).json()
                return rows

            for dev in devices:
                await wait_for(lambda d=dev: _total(stored(d), published), timeout=60, interval=0.5,
                               what=f"every published event in {dev}'s stored windows")
                rows = await stored(dev)
                assert sum(r["events"] for r in rows) == published
                newest = max(rows, key=lambda r: r["window_start"])
                assert newest["fields"]["v"]["max"] == 2.0  # the new handler's output
            assert deadletters.records == []
            canary = done["steps"][0][0]
            others = [d for d in devices if d != canary]

            # 2. Broken releases halt after the canary; the canary runs the previous digest again.
            for broken in ("1.2-exit", "1.2-errors", "1.3-unreachable"):
                before = {d["id"]: d["desired_version"] for d in (await http.get("/v1/devices")).json()}
                publisher = Publisher(device_broker, topic, rate=50)
                result = await rollout(broken, max_error_rate=0.05)
                publisher.stop()
                publisher = None
                assert result["state"] == "halted", result
                await wait_for(lambda: runs(canary, release_images["1.1"]), timeout=60,
                               what=f"{canary} back on 1.1 after {broken}")
                after = {d["id"]: d["desired_version"] for d in (await http.get("/v1/devices")).json()}
                for dev in others:
                    assert after[dev] == before[dev], f"{dev} was touched by the halted rollout of {broken}"
                    assert runs(dev, release_images["1.1"])
                assert fleet.states[canary].dispatchers["temps"].runtime.healthy
    finally:
        if publisher is not None:
            publisher.stop()
        deadletters.close()
        for dev in devices:
            remove_labelled(docker_client, dev)


async def _total(rows: Any, expected: int) -> bool:
    return sum(r["events"] for r in await rows) >= expected
