"""The hub's desired state on a real mosquitto: a device announces itself with a Status, a handler and a
subscription are added through the API, and the device receives its signed document, retained."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import httpx
import pytest

from edge_protocol.desired import DesiredDocument, load_public_key, verify_document
from edge_protocol.messages import Reported, Status
from edge_protocol.topics import Topics
from hub.desired.keys import init_keys
from scripts.mosquitto import Mosquitto
from tests.support.running import hub_config, serving_hub, wait_for

pytestmark = pytest.mark.integration

TOKEN = "desired-token"


@contextlib.asynccontextmanager
async def device(broker: Mosquitto, topics: Topics, device_id: str) -> AsyncIterator[aiomqtt.Client]:
    """An agent stand-in subscribed to its desired topic."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"agent-{device_id}", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(topics.desired(device_id), qos=1)
        yield client


async def next_desired(client: aiomqtt.Client, timeout: float = 15.0) -> tuple[bytes, bool]:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return message.payload, message.retain
    raise AssertionError("the message stream ended")


async def test_a_device_gets_its_signed_desired_state_retained(
    cloud_broker: Mosquitto, topic_prefix: str, device_id: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    pair = init_keys(tmp_path / "keys")
    public = load_public_key(pair.public_path.read_text())
    config = hub_config(
        cloud_broker, topic_prefix, tmp_path / "hub.db", token=TOKEN, signing={"private_key": pair.private_path}
    )
    other = f"{device_id}-other"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        serving_hub(config) as (api, _hub),
        httpx.AsyncClient(base_url=api, headers=auth) as http,
        device(cloud_broker, topics, device_id) as agent,
    ):
        for dev in (device_id, other):
            online = Status(device=dev, online=True, agent_version="0.3.0", ts=time.time())
            await agent.publish(topics.status(dev), online.model_dump_json(), qos=1, retain=True)

        # Known from its status: an empty first document, signed, to this device.
        payload, _ = await next_desired(agent)
        first = verify_document(payload, public, device_id)
        assert (first.version, first.handlers, first.subscriptions) == (1, [], [])

        assert (await http.put(f"/v1/devices/{device_id}/labels", json={"set": {"site": "lab"}})).status_code == 200
        handler = {"name": "temp-c", "image": "edgefleet/temp-c:dev", "limits": {"memory": "64m"}}
        assert (await http.post("/v1/handlers", json=handler)).status_code == 201
        sub = {
            "target": ["site=lab"],
            "spec": {"name": "temp-lab", "topic": "sensors/+/t", "handler": "temp-c", "stats": ["count", "max"]},
        }
        created = await http.post("/v1/subscriptions", json=sub)
        assert created.status_code == 201, created.text
        assert created.json()["desired"] == [{"device": device_id, "version": 2}]  # not the other device

        payload, _ = await next_desired(agent)
        second = verify_document(payload, public, device_id)
        assert second.version == 2
        assert [(h.name, h.image, h.limits.memory) for h in second.handlers] == [
            ("temp-c", "edgefleet/temp-c:dev", "64m")
        ]
        assert [(s.name, s.topic, s.stats) for s in second.subscriptions] == [
            ("temp-lab", "sensors/+/t", ["count", "max"])
        ]

        async def published() -> bool:
            shown = (await http.get(f"/v1/devices/{device_id}/desired")).json()
            return shown["version"] == 2 and shown["published_at"] is not None

        await wait_for(published, timeout=10, what="version 2 marked published")
        other_doc = DesiredDocument.model_validate((await http.get(f"/v1/devices/{other}/desired")).json()["document"])
        assert (other_doc.version, other_doc.subscriptions) == (1, [])

        # The agent reports what it applied: the registry shows it beside the desired version.
        report = Reported(device=device_id, agent_version="0.3.0", applied_version=2, ts=time.time())
        await agent.publish(topics.reported(device_id), report.model_dump_json(), qos=1, retain=True)

        async def applied() -> bool:
            view = (await http.get(f"/v1/devices/{device_id}")).json()
            return (view["applied_version"], view["desired_version"]) == (2, 2)

        await wait_for(applied, timeout=10, what="applied version 2 in /v1/devices/{id}")

    # A device that (re)connects later gets the newest version from the broker, even with the hub gone.
    async with device(cloud_broker, topics, device_id) as late:
        payload, retained = await next_desired(late)
        assert retained
        assert verify_document(payload, public, device_id).version == 2
        for dev in (device_id, other):
            for topic in (topics.desired(dev), topics.status(dev), topics.reported(dev)):
                await late.publish(topic, b"", qos=1, retain=True)  # clear what this test retained
