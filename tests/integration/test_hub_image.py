"""The hub's OCI image (containers/hub/): built offline from the base image, run as an agent's hub would be.

The container runs with host networking against this run's cloud mosquitto, on SQLite in a named volume and,
when EDGEFLEET_TEST_POSTGRES_URL is set, on a database of its own on that server. An agent stand-in publishes
one batch; the hub acknowledges it, stores it once, and serves it through its API under a token made with
``docker exec ... hub token create``. Container, volume and database are removed whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import docker
import docker.errors
import httpx
import pytest
from docker.models.containers import Container

from edge_protocol.aggregate import FieldAccumulator, WindowResult, window_id
from edge_protocol.messages import Ack, AggregateBatch, SequencedResult
from edge_protocol.topics import Topics
from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto
from tests.support.postgres_db import fresh_database, server_url
from tests.support.running import wait_for

# A cold build (empty wheelhouse: wheels come from the index once) takes a minute or two; later ones seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "containers" / "hub" / "build.sh"
IMAGE = "edgefleet/hub:dev"
STATE_DIR = "/var/lib/edgefleet"
TEST_LABEL = "edgefleet.test"


@pytest.fixture(scope="module")
def hub_image(docker_client: docker.DockerClient) -> str:
    """The image's id, built by containers/hub/build.sh (always: an unchanged tree is a layer-cache hit)."""
    started = time.monotonic()
    result = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"containers/hub/build.sh failed:\n{result.stderr}"
    name, image_id = result.stdout.split()
    assert name == IMAGE
    print(f"containers/hub/build.sh: {time.monotonic() - started:.1f}s")  # shown with -s or on failure
    return image_id


@contextlib.contextmanager
def store_for(
    kind: str, docker_client: docker.DockerClient
) -> Iterator[tuple[dict[str, str], dict[str, dict[str, str]]]]:
    """(environment, volumes) of the container for a store of ``kind``; what they create is removed at exit."""
    if kind == "postgresql":
        with fresh_database(server_url()) as url:
            yield {"EDGEFLEET_HUB_STORE__URL": url}, {}
        return
    # SQLite at the default url (sqlite:///./hub.db), relative to the image's working directory: the volume.
    volume = docker_client.volumes.create(f"edgefleet-hub-test-{uuid.uuid4().hex[:8]}", labels={TEST_LABEL: "hub"})
    try:
        yield {}, {volume.name: {"bind": STATE_DIR, "mode": "rw"}}
    finally:
        volume.remove(force=True)


@contextlib.contextmanager
def hub_container(
    docker_client: docker.DockerClient, image: str, environment: dict[str, str], volumes: dict[str, dict[str, str]]
) -> Iterator[Container]:
    """`docker run --network host IMAGE` (ENTRYPOINT hub, CMD serve); force-removed at exit."""
    container = docker_client.containers.run(
        image,
        detach=True,
        network_mode="host",
        environment=environment,
        volumes=volumes,
        labels={TEST_LABEL: "hub"},
        name=f"edgefleet-hub-test-{uuid.uuid4().hex[:8]}",
    )
    try:
        yield container
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def logs(container: Container) -> str:
    try:
        return container.logs().decode(errors="replace")[-4000:]
    except docker.errors.NotFound:
        return "(container gone)"


async def answers(http: httpx.AsyncClient, container: Container) -> bool:
    """/healthz answers; fails at once, with the logs, if the container has exited."""
    container.reload()
    assert container.status in ("created", "running"), f"the hub exited:\n{logs(container)}"
    try:
        return (await http.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


def one_batch(device: str) -> AggregateBatch:
    """Two 10 s windows of one group, as an agent's outbox would send them (sequences 1 and 2)."""
    start = 1_700_000_000.0
    records = []
    for seq in (1, 2):
        acc = FieldAccumulator()
        for i, value in enumerate((20.0, 21.5, 23.0)):
            acc.add(value, start + 10.0 * seq + i)
        window_start = start + 10.0 * seq
        result = WindowResult(
            id=window_id(device, "temp", "rev1", "room-1", window_start),
            subscription="temp",
            revision="rev1",
            group="room-1",
            window_start=window_start,
            window_end=window_start + 10.0,
            events=3,
            fields={"celsius": acc.freeze()},
            stats=["count", "mean"],
        )
        records.append(SequencedResult(seq=seq, result=result))
    return AggregateBatch(device=device, sent_at=time.time(), records=records)


@contextlib.asynccontextmanager
async def agent_stand_in(broker: Mosquitto, topics: Topics, device: str) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"agent-{device}", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(topics.acks(device), qos=1)
        yield client


async def next_ack(client: aiomqtt.Client, timeout: float = 30.0) -> Ack:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return Ack.model_validate_json(message.payload)
    raise AssertionError("the message stream ended")


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_the_image_serves_ingests_and_acks_as_the_hub(
    store: str,
    hub_image: str,
    docker_client: docker.DockerClient,
    cloud_broker: Mosquitto,
    topic_prefix: str,
    device_id: str,
) -> None:
    topics = Topics(topic_prefix)
    port = free_port()
    env = {
        "EDGEFLEET_HUB_BROKER__HOST": cloud_broker.host,
        "EDGEFLEET_HUB_BROKER__PORT": str(cloud_broker.port),
        "EDGEFLEET_HUB_BROKER__PREFIX": topic_prefix,
        "EDGEFLEET_HUB_BROKER__CLIENT_ID": f"hub-image-{uuid.uuid4().hex[:8]}",
        "EDGEFLEET_HUB_API__PORT": str(port),  # on 127.0.0.1 (the default): the host's, with host networking
    }
    with (
        store_for(store, docker_client) as (store_env, volumes),
        hub_container(docker_client, hub_image, {**env, **store_env}, volumes) as container,
    ):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            await wait_for(
                lambda: answers(http, container), timeout=60, what="the hub's /healthz", detail=lambda: logs(container)
            )
            assert container.attrs["Config"]["User"] == "10001:10001"

            # The CLI in the same container, with its environment: the same store as `hub serve`.
            code, (out, err) = container.exec_run(["hub", "token", "create", "image-test"], demux=True)
            assert code == 0, err
            token = (out or b"").decode().strip()
            assert token
            # The running hub sees the stored token: the API is closed to anyone without it from now on.
            assert (await http.get("/v1/aggregates")).status_code == 401
            auth = {"Authorization": f"Bearer {token}"}

            batch = one_batch(device_id)
            async with agent_stand_in(cloud_broker, topics, device_id) as agent:
                await agent.publish(topics.aggregates(device_id), batch.model_dump_json(), qos=1)
                assert await next_ack(agent) == Ack(device=device_id, ranges=[(1, 2)])

            response = await http.get("/v1/aggregates", params={"device": device_id}, headers=auth)
            assert response.status_code == 200, response.text
            stored = sorted(row["window_id"] for row in response.json())
            assert stored == sorted(r.result.id for r in batch.records)

        if store == "sqlite":
            code, _ = container.exec_run(["test", "-s", f"{STATE_DIR}/hub.db"])
            assert code == 0, f"no SQLite store in the volume at {STATE_DIR}/hub.db"
        # SIGTERM reaches the hub (PID 1 in the container, with its own handlers): a clean stop, no SIGKILL.
        container.stop(timeout=20)
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0, logs(container)
