"""Issue 3's acceptance: three managed agents with different labels against one hub, on real brokers and
the real engine. A subscription added at the hub reaches exactly the matching devices and their aggregates
arrive; a removed subscription stops there; an agent restarted while the hub is down runs its last applied
state; the CLI without a token, or with a wrong one, is refused by the API."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hub.desired.keys import init_keys
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import QUICK_CLOUD, QUICK_RESTARTS, agent_config
from tests.support.engine import remove_labelled
from tests.support.mqtt_clients import publish_all
from tests.support.running import fleet_of, hub_config, serving_hub, wait_for

pytestmark = pytest.mark.integration

TOKEN = "control-plane-token"
HUB = [sys.executable, "-m", "hub"]


async def test_hub_manages_three_agents_by_label(
    device_broker: Mosquitto,
    cloud_broker: Mosquitto,
    handler_images: dict[str, str],
    docker_client: Any,
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    keys = init_keys(tmp_path / "keys")
    config = hub_config(
        cloud_broker, topic_prefix, tmp_path / "hub.db", token=TOKEN, signing={"private_key": keys.private_path}
    )
    labels = {f"{device_id}-a": "lab", f"{device_id}-b": "lab", f"{device_id}-c": "field"}
    configs = {
        dev: agent_config(
            device_id=dev, data_dir=tmp_path / dev, device_port=device_broker.port, cloud_port=cloud_broker.port,
            prefix=topic_prefix, handlers=[], subscriptions=[], hub_public_key_file=keys.public_path,
            cloud_extra={**QUICK_CLOUD, "report_interval": "1s"}, runtime={**QUICK_RESTARTS, "probation": "1s"},
        )
        for dev in labels
    }
    topic = f"{topic_prefix}/sensors/+/temperature"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with fleet_of(configs) as fleet:
            async with serving_hub(config) as (api, _hub), httpx.AsyncClient(base_url=api, headers=auth) as http:

                async def known() -> bool:
                    devices = (await http.get("/v1/devices")).json()
                    return {d["id"] for d in devices} >= set(labels)

                await wait_for(known, timeout=30, what="the hub knows all three devices")
                for dev, site in labels.items():
                    resp = await http.put(f"/v1/devices/{dev}/labels", json={"set": {"site": site}})
                    assert resp.status_code == 200, resp.text

                # Managed agents admit images by content only: a never-pushed image goes by its local id.
                image = handler_images["edgefleet/temp-c:dev"]
                resp = await http.post("/v1/handlers", json={"name": "temp-c", "image": image})
                assert resp.status_code == 201, resp.text
                sub = {"target": ["site=lab"], "spec": {
                    "name": "temps", "topic": topic, "handler": "temp-c", "window": {"size": "1s"},
                    "stats": ["count", "sum", "max"],
                }}
                resp = await http.post("/v1/subscriptions", json=sub)
                assert resp.status_code == 201, resp.text
                lab = [d for d, s in labels.items() if s == "lab"]
                (field,) = [d for d, s in labels.items() if s == "field"]
                await wait_for(lambda: all("temps" in fleet.states[d].dispatchers for d in lab), timeout=60,
                               what="the subscription on both lab devices")
                assert fleet.states[field].dispatchers == {}

                events = [(f"{topic_prefix}/sensors/s{i % 3}/temperature", orjson.dumps({"f": 50 + i % 7}))
                          for i in range(300)]
                await asyncio.to_thread(publish_all, device_broker, events)

                async def stored(dev: str) -> int:
                    rows = (await http.get("/v1/aggregates", params={"device": dev, "limit": 10_000})).json()
                    return sum(r["events"] for r in rows)

                for dev in lab:
                    await wait_for(lambda d=dev: _ge(stored(d), 300), timeout=60, what=f"aggregates of {dev}")
                    assert await stored(dev) == 300
                assert await stored(field) == 0

                async def versions_applied() -> bool:
                    devices = (await http.get("/v1/devices")).json()
                    return all(d["applied_version"] == d["desired_version"] is not None
                               for d in devices if d["id"] in labels)

                await wait_for(versions_applied, timeout=30, what="every device reports its desired version")

                env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_HUB_TOKEN"}
                # Both messages come from the API's 401: without a token, and with a wrong one.
                for extra, said in (([], "needs a token"), (["--token", "wrong"], "refused the token")):
                    # In a thread: the hub answers from this test's event loop.
                    cli = await asyncio.to_thread(subprocess.run, [*HUB, "devices", "--api", api, *extra],
                                                  capture_output=True, text=True, env=env, timeout=60, check=False)
                    assert cli.returncode != 0
                    assert said in cli.stderr, cli.stderr
                argv = [*HUB, "devices", "--api", api, "--token", TOKEN, "--json"]
                cli = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, env=env,
                                              timeout=60, check=True)
                assert {d["id"] for d in orjson.loads(cli.stdout)} >= set(labels)

            # The hub is down: a lab agent restarted now runs what it applied last.
            restarted = lab[0]
            before = fleet.states[restarted].reconciler
            # What it applied is its last good document once the probation passed.
            await wait_for(lambda: before is not None and before.good is not None, timeout=15, what="a good document")
            await fleet.stop(restarted)
            state = await fleet.start(restarted)
            assert "temps" in state.dispatchers
            assert state.reconciler is not None
            assert state.reconciler.applied_version is not None

            async with serving_hub(config) as (api, _hub), httpx.AsyncClient(base_url=api, headers=auth) as http:
                resp = await http.delete("/v1/subscriptions/temps")
                assert resp.status_code in (200, 204), resp.text
                await wait_for(lambda: all(fleet.states[d].dispatchers == {} for d in lab), timeout=60,
                               what="the subscription removed from both lab devices")
    finally:
        for dev in labels:
            remove_labelled(docker_client, dev)


async def _ge(value: Any, target: int) -> bool:
    return bool(await value >= target)
