"""The agent SIGKILLed at each step of a desired-state update, then restarted with the cloud away: it runs its
last good document (handlers and subscriptions) and every event is counted once.

The agent runs as `edge-agent run` (a real process, really killed) on the real engine and device broker; the hub
is a signing key and a plain client publishing retained desired state on a broker of this test, which is
stopped before the restart. ``EDGE_AGENT_PAUSE_AT`` (edge_agent.staging) makes the agent log a marker and wait
at one step of the update -- after the pull, after the new container answered its health ping, mid-switch
(handlers and routes switched, the old subscription not yet retired), during the probation -- and the test
kills it there. Events flow the whole time; no hub acknowledges, so every window result stays in the outbox,
where the test adds up the per-group event counts and sums (a lost and a doubled event cannot cancel out).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.staging import PAUSE_ENV, PAUSE_MARKER, PAUSE_POINTS
from edge_protocol.desired import DesiredDocument, sign_document
from edge_protocol.specs import SubscriptionSpec
from edge_protocol.topics import Topics
from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import QUICK_CLOUD, QUICK_RESTARTS, SHORT_GRACE
from tests.support.daemons import Daemon, agent_process
from tests.support.engine import ensure_handler_images, labelled_containers
from tests.support.mqtt_clients import publish_all
from tests.support.readers import assert_events_per_group, outbox_results
from tests.support.rig import Rig
from tests.support.running import wait_for
from tests.support.workloads import SENTINEL_GROUP, sentinel_event, temperature_events, temps_subscription

pytestmark = pytest.mark.integration

V1_IMAGE, V2_IMAGE = "edgefleet/temp-c:dev", "edgefleet/temp-c-v2:dev"


def _pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _publish_desired(cloud: Mosquitto, topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(cloud.host, cloud.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _checkpointed(outbox: Path, key: str) -> int:
    """Events in the open windows of the checkpoint ``key`` (``subscription@revision``) of the outbox."""
    with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=10)) as db:
        row = db.execute("SELECT state FROM checkpoints WHERE subscription = ?", (key,)).fetchone()
    return 0 if row is None else sum(int(w["events"]) for w in json.loads(row[0])["windows"])


def _logged(agent: Daemon, text: str) -> bool:
    return text in agent.log_text(since_start=True)


@pytest.mark.parametrize("step", PAUSE_POINTS)
async def test_sigkill_at_each_step_of_an_update_restarts_on_the_last_good_document(
    fresh_broker: Any,
    docker_client: Any,
    rig: Rig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    images = ensure_handler_images(docker_client, (V1_IMAGE, V2_IMAGE))
    key = Ed25519PrivateKey.generate()
    cloud = fresh_broker()
    prefix, device_id = rig.prefix, rig.device_id
    sub1 = temps_subscription(prefix)
    sub2 = temps_subscription(prefix, window={"size": "2s"})  # another revision of the same subscription
    rev1, rev2 = (SubscriptionSpec.model_validate(s).revision for s in (sub1, sub2))
    assert rev1 != rev2

    def desired(version: int, image: str, sub: dict[str, Any]) -> bytes:
        doc = DesiredDocument(device=device_id, version=version, issued_at=time.time(),
                              handlers=[{"name": "temp-c", "image": image}], subscriptions=[sub])
        return sign_document(doc, key).model_dump_json().encode()

    status = f"127.0.0.1:{free_port()}"
    data_dir = tmp_path / "agent-data"
    outbox = data_dir / "outbox.sqlite"
    config = rig.agent_document(
        data_dir=data_dir, cloud_port=cloud.port, cloud_extra=QUICK_CLOUD, hub_public_key=_pem(key),
        runtime={**QUICK_RESTARTS, "probation": "1s", "health_timeout": "20s"}, status={"listen": status},
        grace_period=SHORT_GRACE,
    )
    desired_topic = Topics(prefix).desired(device_id)
    readings, celsius = temperature_events(prefix, 900, seed=len(step))
    batches = [readings[:300], readings[300:500], readings[500:600], readings[600:]]

    def results() -> list[dict[str, Any]]:
        return [r for r in outbox_results(outbox) if r["group"] != SENTINEL_GROUP] if outbox.exists() else []

    def one_container(image_id: str) -> bool:
        found = labelled_containers(docker_client, device_id)
        return len(found) == 1 and found[0].status == "running" and found[0].image.id == image_id

    with agent_process(config, tmp_path / "agent") as agent:
        # 1. Version 1 applied and good (its probation passed), events flowing.
        await agent.start()
        _publish_desired(cloud, desired_topic, desired(1, images[V1_IMAGE], sub1))
        await wait_for(lambda: _logged(agent, "desired state version 1 is the last good one"), timeout=60,
                       what="version 1 good", detail=agent.tail)
        await asyncio.to_thread(publish_all, rig.broker, batches[0])
        assert agent.stop() == 0, agent.tail()

        # 2. Restarted with the pause point set; version 2 (new image, new subscription revision) stops there.
        monkeypatch.setenv(PAUSE_ENV, step)
        await agent.start()
        monkeypatch.delenv(PAUSE_ENV)
        _publish_desired(cloud, desired_topic, desired(2, images[V2_IMAGE], sub2))
        await wait_for(lambda: _logged(agent, f"{PAUSE_MARKER} {step}"), timeout=60, what=f"paused at {step}",
                       detail=agent.tail)
        paused_at = time.time()
        await asyncio.to_thread(publish_all, rig.broker, batches[1])
        # Events taken while paused reach the outbox (closed windows): the stream ran through the pause.
        await wait_for(lambda: any(r["window_end"] > paused_at for r in results()), timeout=30,
                       what="windows of events taken during the pause", detail=agent.tail)
        # The last events before the kill sit in open windows, held by the outbox's checkpoint only: of version
        # 2's subscription when it took over (its windows must be emitted after the restart, not dropped).
        await asyncio.to_thread(publish_all, rig.broker, batches[2])
        holder = f"temps@{rev2 if step in ('mid-switch', 'probation') else rev1}"
        await wait_for(lambda: _checkpointed(outbox, holder) > 0, timeout=10, what=f"events checkpointed in {holder}")
        agent.kill()

        # 3. The cloud is away: the agent starts on what it has on disk.
        cloud.stop()
        await agent.start()
        assert _logged(agent, "running stored desired state version 1"), agent.tail()
        await wait_for(lambda: one_container(images[V1_IMAGE]), timeout=30, what="one container, version 1's image",
                       detail=lambda: labelled_containers(docker_client, device_id))
        reported = httpx.get(f"http://{status}/status", timeout=5, trust_env=False).json()
        assert reported["applied_version"] == 1
        assert [(h["name"], h["image"]) for h in reported["handlers"]] == [("temp-c", images[V1_IMAGE])]
        assert list(reported["subscriptions"]) == ["temps"]
        # Windows are whole seconds on arrival time: those from the next second on hold only what comes now.
        fresh = math.floor(time.time()) + 1.0
        await wait_for(lambda: time.time() >= fresh, timeout=2, what="the next second")
        await asyncio.to_thread(publish_all, rig.broker, [*batches[3], sentinel_event(prefix)])
        await wait_for(lambda: any(r["group"] == SENTINEL_GROUP for r in outbox_results(outbox)), timeout=30,
                       what="the sentinel's window (so every earlier window is in the outbox)", detail=agent.tail)
        assert agent.stop() == 0, agent.tail()

    rows = results()
    later = [r for r in outbox_results(outbox) if r["window_start"] >= fresh]
    assert later, "windows of the events taken after the restart"
    assert {r["revision"] for r in later} == {rev1}, "after the restart, version 1's subscription runs"
    if step in ("mid-switch", "probation"):
        assert any(r["revision"] == rev2 for r in rows), "version 2's subscription ran before the kill"
    # Every event once: per group, the event counts and the Celsius values' count and sum are the published ones.
    assert_events_per_group(rows, readings, celsius)
