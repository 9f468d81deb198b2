"""Issue 14's expiry on real brokers and the real hub: a managed agent runs the document the hub signed for it,
is then fed an expired document signed with the hub's own key (what someone holding the broker could replay),
refuses it as expired and keeps running; the hub stores the refusal counted by reason, `hub device show` lists
it and the hub's metrics count it by reason."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from rich.console import Console

from edge_agent.runtime.base import HandlerRuntime
from edge_protocol.desired import DesiredDocument, load_private_key, sign_document
from edge_protocol.specs import HandlerSpec
from edge_protocol.topics import Topics
from hub.api.schemas.fleet import DeviceDetailOut
from hub.cli.render.fleet import device_detail
from hub.desired.keys import init_keys
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import QUICK_CLOUD, agent_config
from tests.support.running import hub_config, running_agent, serving_hub, wait_for

pytestmark = pytest.mark.integration

TOKEN = "expiry-token"


def no_runtime(spec: HandlerSpec) -> HandlerRuntime:
    raise AssertionError(f"no document in this test names a handler ({spec.name})")


def publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_an_expired_document_is_refused_and_the_hub_shows_it_by_reason(
    cloud_broker: Mosquitto, device_broker: Mosquitto, device_id: str, topic_prefix: str, tmp_path: Path
) -> None:
    keys = init_keys(tmp_path / "keys")
    config = hub_config(
        cloud_broker, topic_prefix, tmp_path / "hub.db", token=TOKEN, signing={"private_key": keys.private_path}
    )
    agent = agent_config(
        device_id=device_id, data_dir=tmp_path / "agent", device_port=device_broker.port,
        cloud_port=cloud_broker.port, prefix=topic_prefix, hub_public_key_file=keys.public_path,
        cloud_extra={**QUICK_CLOUD, "report_interval": "1s"},
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        serving_hub(config) as (api, _hub),
        httpx.AsyncClient(base_url=api, headers=auth) as http,
        running_agent(agent, runtime_factory=no_runtime) as (state, _task),
    ):
        rec = state.reconciler
        assert rec is not None
        # The hub compiles the device's first document when it hears from it, signed with a week's validity.
        await wait_for(lambda: rec.applied_version == 1, timeout=30, what="the hub's first document applied")
        running = rec.checks.running
        assert running is not None
        assert running.expires_at is not None
        assert running.expires_at > time.time() + 6 * 86400

        now = time.time()
        stale = DesiredDocument(device=device_id, version=5, issued_at=now - 7200, expires_at=now - 3600)
        signed = sign_document(stale, load_private_key(keys.private_path.read_bytes()))
        publish(cloud_broker, Topics(topic_prefix).desired(device_id), signed.model_dump_json().encode())
        await wait_for(lambda: rec.checks.refusals == {"expired": 1}, timeout=15, what="the expired document refused")
        assert rec.applied_version == 1
        assert "desired-expired" not in state.alarms  # what it runs has not expired

        async def shown() -> DeviceDetailOut | None:
            view = DeviceDetailOut.model_validate((await http.get(f"/v1/devices/{device_id}")).json())
            return view if view.desired_refusals == {"expired": 1} else None

        await wait_for(shown, timeout=15, what="the hub shows the refusal by reason")
        view = await shown()
        assert view is not None
        assert (view.last_refusal or "").startswith("expired")
        assert view.desired_expires_at == running.expires_at
        console = Console(width=200, record=True, color_system=None)
        console.print(device_detail(view))
        assert re.search(r"desired state refused +expired: 1 *\n", console.export_text())
        metrics = (await http.get("/metrics")).text
        assert 'edgefleet_hub_device_desired_refusals{reason="expired"}' in metrics
