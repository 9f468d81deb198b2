"""A managed agent applies only the hub's signed desired state, refuses anything else, and keeps running
its last applied state across restarts without the cloud. The hub side is signed here with the real key
functions, so this tests the agent alone; tests/integration/test_control_plane.py runs the real hub."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_protocol.desired import DesiredDocument, sign_document
from edge_protocol.messages import Reported
from edge_protocol.topics import Topics
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import QUICK_CLOUD, QUICK_RESTARTS, agent_config
from tests.support.running import running_agent, wait_for

pytestmark = pytest.mark.integration


def _pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class Cloud:
    """A plain client on the cloud broker: publishes desired state, watches reported state."""

    def __init__(self, broker: Mosquitto, topics: Topics, device: str) -> None:
        self.reported: list[Reported] = []
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = lambda _c, _u, m: self.reported.append(Reported.model_validate_json(m.payload))
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(topics.reported(device), qos=1)
        self._client.loop_start()
        self._topics, self._device = topics, device

    def publish_desired(self, payload: bytes) -> None:
        self._client.publish(self._topics.desired(self._device), payload, qos=1, retain=True).wait_for_publish(10)

    def last(self) -> Reported | None:
        return self.reported[-1] if self.reported else None

    def close(self) -> None:
        # The broker is this test's own (fresh_broker), so its retained messages go with it.
        self._client.disconnect()
        self._client.loop_stop()


IMAGE = {"ref": ""}  # the local image id of edgefleet/temp-c:dev, set by the test


def _document(device: str, version: int, prefix: str, subscription: str, image: str | None = None) -> DesiredDocument:
    return DesiredDocument(
        device=device,
        version=version,
        issued_at=time.time(),
        handlers=[{"name": "temp-c", "image": image or IMAGE["ref"]}],
        subscriptions=[{
            "name": subscription, "topic": f"{prefix}/sensors/+/temperature", "handler": "temp-c",
            "window": {"size": "1s"},
        }],
    )


async def test_managed_agent_applies_refuses_and_survives_restart_without_cloud(
    device_broker: Mosquitto,
    fresh_broker: Any,
    handler_images: dict[str, str],
    docker_client: Any,
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    hub_key, rogue_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    IMAGE["ref"] = handler_images["edgefleet/temp-c:dev"]  # a never-pushed image is admitted by its local id
    cloud_broker = fresh_broker()
    topics = Topics(topic_prefix)
    cloud = Cloud(cloud_broker, topics, device_id)

    def config() -> Any:
        return agent_config(
            device_id=device_id, data_dir=tmp_path / "agent", device_port=device_broker.port,
            cloud_port=cloud_broker.port, prefix=topic_prefix, handlers=[], subscriptions=[],
            hub_public_key=_pem(hub_key), cloud_extra={**QUICK_CLOUD, "report_interval": "1s"},
            runtime={**QUICK_RESTARTS, "probation": "1s"},
        )

    try:
        async with running_agent(config()) as (state, _task):
            assert state.dispatchers == {}
            v2 = sign_document(_document(device_id, 2, topic_prefix, "temps"), hub_key)
            cloud.publish_desired(v2.model_dump_json().encode())
            await wait_for(lambda: "temps" in state.dispatchers, timeout=60, what="subscription applied")
            await wait_for(lambda: (r := cloud.last()) is not None and r.applied_version == 2, timeout=30,
                           what="applied version 2 reported")
            assert [c.name for c in docker_client.containers.list(
                filters={"label": f"edgefleet.device={device_id}"})] != []

            refusals: list[tuple[bytes, str]] = []
            tampered = v2.model_copy(update={"document": v2.document.replace('"size":"1s"', '"size":"5s"')})
            refusals.append((tampered.model_dump_json().encode(), "bad-signature"))
            rogue = sign_document(_document(device_id, 9, topic_prefix, "rogue"), rogue_key)
            refusals.append((rogue.model_dump_json().encode(), "bad-signature"))
            other = sign_document(_document("someone-else", 9, topic_prefix, "other"), hub_key)
            refusals.append((other.model_dump_json().encode(), "wrong-device"))
            replay = sign_document(_document(device_id, 1, topic_prefix, "old"), hub_key)
            refusals.append((replay.model_dump_json().encode(), "stale-version"))
            refusals.append((b'{"kind":"desired"}', "malformed"))
            by_tag = sign_document(_document(device_id, 10, topic_prefix, "tag", "edgefleet/temp-c:dev"), hub_key)
            refusals.append((by_tag.model_dump_json().encode(), "image-not-admitted"))
            for payload, reason in refusals:
                before = state.reconciler.refusals if state.reconciler else 0
                cloud.publish_desired(payload)
                await wait_for(lambda b=before: state.reconciler is not None and state.reconciler.refusals > b,
                               timeout=15, what=f"refusal {reason}")
                assert state.reconciler is not None
                assert state.reconciler.last_refusal is not None
                assert state.reconciler.last_refusal.startswith(reason)
                assert list(state.dispatchers) == ["temps"]
                assert state.reconciler.applied_version == 2
            await wait_for(lambda: (r := cloud.last()) is not None
                           and (r.last_refusal or "").startswith("image-not-admitted"),
                           timeout=15, what="refusal reported to the hub")
            # The same version again (a retained message on reconnection) is a silent no-op.
            before = state.reconciler.refusals
            cloud.publish_desired(v2.model_dump_json().encode())
            await asyncio.sleep(0)
            assert state.reconciler.refusals == before
            # Version 2 is the last good document (written to disk) once its probation passed.
            await wait_for(lambda: state.reconciler is not None and state.reconciler.good is not None
                           and state.reconciler.good[0].version == 2, timeout=15, what="version 2 good")
        cloud_broker.stop()
        # The cloud is away: the restarted agent runs what it applied last, from its own disk.
        async with running_agent(config()) as (state, _task):
            assert list(state.dispatchers) == ["temps"]
            assert state.reconciler is not None
            assert state.reconciler.applied_version == 2
    finally:
        cloud.close()
