"""A handler killed for memory on the real Docker engine (issue 14).

``memhog`` allocates what an event asks for; past its container's memory limit the kernel's OOM killer ends
it. The agent must say so: the event is dead-lettered ``handler-oom`` (not ``handler-exited``), the kill is
counted (runtime, reported handler state, agent metric), and the handler is restarted on the usual backoff
and serves the events after it.

Every Docker call of a test that runs an agent in-process goes through a thread.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import docker
import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry

from edge_agent.metrics import AgentCollector
from edge_protocol.messages import Reported
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import QUICK_RESTARTS, agent_config
from tests.support.engine import HANDLER_IMAGES, containers_of, ensure_handler_images
from tests.support.mqtt_clients import dead_letters, publish_all
from tests.support.running import running_agent, wait_for

pytestmark = pytest.mark.integration

MEMHOG_IMAGE = "edgefleet/memhog:dev"
MEMORY_LIMIT = "48m"
TOO_MUCH_MB = 256  # far past the limit: the allocation itself is killed


@pytest.fixture(scope="module")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The example handlers plus memhog (containers/build.sh builds every handler folder)."""
    return ensure_handler_images(docker_client, (*HANDLER_IMAGES, MEMHOG_IMAGE))


async def test_handler_killed_for_memory_is_dead_lettered_as_oom_counted_and_restarted(
    device_broker: Mosquitto,
    docker_client: docker.DockerClient,
    images: dict[str, str],
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    config = agent_config(
        device_id=device_id,
        data_dir=tmp_path / "agent",
        device_port=device_broker.port,
        cloud_port=None,
        prefix=topic_prefix,
        handlers=[
            {"name": "memhog", "image": MEMHOG_IMAGE, "limits": {"memory": MEMORY_LIMIT}, "event_timeout": "30s"}
        ],
        subscriptions=[
            {
                "name": "mem",
                "topic": f"{topic_prefix}/mem/+",
                "handler": "memhog",
                "window": {"size": "1s"},
                "stats": ["count"],
            }
        ],
        runtime=QUICK_RESTARTS,
    )
    hog = (f"{topic_prefix}/mem/hog", json.dumps({"alloc_mb": TOO_MUCH_MB}).encode())
    fits = (f"{topic_prefix}/mem/fits", json.dumps({"alloc_mb": 4}).encode())
    later = [(f"{topic_prefix}/mem/e{i}", json.dumps({"v": i}).encode()) for i in range(5)]

    with dead_letters(device_broker, topic_prefix) as letters:
        async with running_agent(config) as (state, agent_task):
            runtime = state.runtimes["memhog"]
            counters = state.dispatchers["mem"].counters
            first = runtime.container_id
            # One at a time: the SDK answers a batch at once, so a batch's first event would be the one charged.
            await asyncio.to_thread(publish_all, device_broker, [fits])
            await wait_for(
                lambda: counters.processed >= 1,
                timeout=30,
                what="an allocation within the limit",
                detail=state.counters,
            )
            await asyncio.to_thread(publish_all, device_broker, [hog])
            await wait_for(
                lambda: len(letters.records) >= 1, timeout=30, what="the hog's dead letter", detail=state.counters
            )
            await asyncio.to_thread(publish_all, device_broker, later)
            await wait_for(
                lambda: counters.processed >= 1 + len(later),
                timeout=30,
                what="the events after the kill processed",
                detail=state.counters,
            )
            report: Reported = await state.reported(device_id)
            registry = CollectorRegistry()
            registry.register(AgentCollector(state))
            scraped = generate_latest(registry).decode()
            running = await asyncio.to_thread(containers_of, docker_client, device_id, "memhog")
            assert not agent_task.done()

        letter = letters.records[0]
        print(f"\ndead letter: {letter.reason}: {letter.detail}")
        assert [(r.reason, r.payload_bytes()) for r in letters.records] == [("handler-oom", hog[1])]
        assert "memory" in letter.detail
        assert MEMORY_LIMIT in letter.detail
        assert dict(counters.dead_lettered) == {"handler-oom": 1}
        assert runtime.oom_kills == 1
        assert runtime.restarts == 1
        assert [(h.name, h.oom_kills, h.restarts, h.healthy) for h in report.handlers] == [("memhog", 1, 1, True)]
        assert b'"oom_kills":1' in report.wire()
        assert 'edgefleet_agent_handler_oom_kills_total{handler="memhog"} 1.0' in scraped
        assert [c.id for c in running] not in ([], [first]), "a new container serves after the kill"
