"""A registry that serves a corrupt layer: the update is refused at step pull and nothing of its document runs.

The image is built here (a layer of its own on top of temp-c), pushed to the test registry and removed from the
engine, so the agent's pull must fetch that layer; its blob is then overwritten in the registry's storage with
bytes of the same length, so the registry serves it under its old digest and the engine's verification fails.
The document also changes the subscription: all-or-nothing, that change must not take effect either.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_protocol.desired import DesiredDocument, sign_document
from edge_protocol.topics import Topics
from scripts.mosquitto import Mosquitto
from scripts.registry import Registry, has_local, push_image
from tests.integration.test_managed_agent import Cloud, _pem
from tests.support.agent_config import QUICK_CLOUD, QUICK_RESTARTS, agent_config
from tests.support.engine import labelled_containers
from tests.support.mqtt_clients import publish_all
from tests.support.running import running_agent, wait_for
from tests.support.workloads import temperature_events, temps_subscription

pytestmark = pytest.mark.integration

MANIFEST_TYPES = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


@contextlib.contextmanager
def corrupt_image(client: Any, registry: Registry, base: str, workdir: Path) -> Any:
    """A pinned reference whose last layer the registry serves corrupted; nothing of it left in the engine."""
    uid = uuid.uuid4().hex[:10]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "token").write_text(uid)
    (workdir / "Dockerfile").write_text(f"FROM {base}\nCOPY token /edgefleet-token\n")
    image, _ = client.images.build(path=str(workdir), tag=f"edgefleet-test/corrupt:{uid}", rm=True)
    repository = registry.repository(f"corrupt-{uid}")
    try:
        ref = push_image(client, image.id, repository, "v2")
    finally:
        client.images.remove(image.id, force=True)
    manifest = httpx.get(f"{registry.url}/v2/corrupt-{uid}/manifests/{ref.split('@', 1)[1]}",
                         headers={"Accept": MANIFEST_TYPES}, timeout=10, trust_env=False).json()
    layer = manifest["layers"][-1]["digest"].removeprefix("sha256:")
    blob = registry.storage_dir / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
    blob.write_bytes(os.urandom(blob.stat().st_size))
    try:
        yield ref
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(ref, force=True)


async def test_a_corrupt_layer_refuses_the_update_at_pull_and_nothing_is_half_applied(
    device_broker: Mosquitto,
    fresh_broker: Any,
    registry: Registry,
    handler_images: dict[str, str],
    docker_client: Any,
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    cloud_broker = fresh_broker()
    cloud = Cloud(cloud_broker, Topics(topic_prefix), device_id)
    old_image = handler_images["edgefleet/temp-c:dev"]
    sub1, sub2 = temps_subscription(topic_prefix), temps_subscription(topic_prefix, window={"size": "5s"})

    def desired(version: int, image: str, sub: dict[str, Any]) -> bytes:
        doc = DesiredDocument(device=device_id, version=version, issued_at=time.time(),
                              handlers=[{"name": "temp-c", "image": image}], subscriptions=[sub])
        return sign_document(doc, key).model_dump_json().encode()

    config = agent_config(
        device_id=device_id, data_dir=tmp_path / "agent", device_port=device_broker.port,
        cloud_port=cloud_broker.port, prefix=topic_prefix, hub_public_key=_pem(key),
        cloud_extra={**QUICK_CLOUD, "report_interval": "1s"}, runtime={**QUICK_RESTARTS, "probation": "0.5s"},
    )
    try:
        with corrupt_image(docker_client, registry, "edgefleet/temp-c:dev", tmp_path / "build") as bad_ref:
            async with running_agent(config) as (state, _task):
                cloud.publish_desired(desired(1, old_image, sub1))
                await wait_for(lambda: state.reconciler is not None and state.reconciler.good is not None,
                               timeout=60, what="version 1 applied and good")
                assert state.pipeline is not None
                assert state.reconciler is not None
                runtime, dispatcher = state.runtimes["temp-c"], state.dispatchers["temps"]

                cloud.publish_desired(desired(2, bad_ref, sub2))
                await wait_for(lambda: state.reconciler is not None and state.reconciler.refused is not None,
                               timeout=120, what="version 2 refused")
                refused = state.reconciler.refused
                assert refused is not None
                assert (refused.version, refused.step, refused.handler, refused.image) == (2, "pull", "temp-c", bad_ref)
                assert "verification failed" in refused.reason, refused  # the engine's own reason
                # Nothing half-applied: the same runtime and dispatcher, the old subscription revision, one container.
                assert state.reconciler.applied_version == 1
                assert state.runtimes == {"temp-c": runtime}
                assert state.dispatchers == {"temps": dispatcher}
                assert dispatcher.runtime is runtime
                assert dispatcher.spec.window is not None
                assert dispatcher.spec.window.size == 1.0
                assert [c.image.id for c in labelled_containers(docker_client, device_id)] == [old_image]
                assert not has_local(docker_client, bad_ref)
                assert state.reconciler.good is not None
                assert state.reconciler.good[0].version == 1
                # Reported to the hub with the step and the reason.
                await wait_for(lambda: (r := cloud.last()) is not None and r.desired_refused is not None,
                               timeout=15, what="the refusal reported")
                reported = cloud.last()
                assert reported is not None
                assert reported.desired_refused == refused
                assert reported.applied_version == 1
                # The old version keeps working.
                before = dispatcher.counters.processed
                readings, _ = temperature_events(topic_prefix, 50, seed=7)
                publish_all(device_broker, readings)
                await wait_for(lambda: dispatcher.counters.processed >= before + 50, timeout=30,
                               what="events processed by the old version")
                assert runtime.healthy
    finally:
        cloud.close()
