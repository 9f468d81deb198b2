"""Issue 17: a subscription on two intake workers (MQTT shared subscription on the real device broker, real
containers). Every event is counted exactly once in the hub's merged windows, both workers take a share, and a
worker killed with SIGKILL loses nothing: the broker keeps its unacknowledged share in its session, and the
agent starts it again."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from edge_agent.state import AgentState
from edge_agent.workers.group import WorkerGroup
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import QUICK_CLOUD, agent_config
from tests.support.mqtt_clients import dead_letters, publish_all
from tests.support.readers import hub_rows
from tests.support.running import running_agent, running_hub, wait_for

pytestmark = pytest.mark.integration

PASSTHROUGH = {"name": "pass", "image": "edgefleet/passthrough:dev"}
SIZE, LATENESS = 4.0, 8.0


def config(device_id: str, prefix: str, tmp_path: Path, device: Mosquitto, cloud: Mosquitto) -> Any:
    return agent_config(
        device_id=device_id, data_dir=tmp_path / "agent", device_port=device.port, cloud_port=cloud.port,
        cloud_extra=QUICK_CLOUD, prefix=prefix, handlers=[PASSTHROUGH],
        subscriptions=[{
            "name": "meters", "topic": f"{prefix}/meters/+", "handler": "pass", "workers": 2,
            "window": {"size": "4s"}, "event_time_field": "t", "lateness": "8s", "fields": ["v"],
            "group_by": ["topic[2]"], "stats": ["count", "sum", "min", "max", "p50"],
        }],
    )


def messages(prefix: str, start: float, n: int, first: int = 0) -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}/meters/m{i % 3}", orjson.dumps({"v": i, "t": start + SIZE * (i % 1000) / 1000}))
        for i in range(first, first + n)
    ]


async def merged_rows(api: httpx.AsyncClient, device: str) -> list[dict[str, Any]]:
    resp = await api.get("/v1/aggregates", params={"device": device, "limit": 1000})
    resp.raise_for_status()
    rows: list[dict[str, Any]] = resp.json()
    return rows


def group_of(state: AgentState) -> WorkerGroup:
    assert state.pipeline is not None
    return state.pipeline.groups["meters"]


async def run(
    device_broker: Mosquitto, cloud_broker: Mosquitto, device_id: str, topic_prefix: str, tmp_path: Path, *, kill: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    n = 3000
    async with running_hub(cloud_broker, topic_prefix, tmp_path / "hub.db") as (api, _hub), running_agent(
        config(device_id, topic_prefix, tmp_path, device_broker, cloud_broker)
    ) as (state, agent_task):
        group = group_of(state)
        assert all(group.pids()), "both workers run"
        start = math.floor(time.time() / SIZE) * SIZE
        if time.time() - start > SIZE / 2:
            start += SIZE  # the events' window must still be open when the last of them arrive
        batch = messages(topic_prefix, start, n)
        if kill:
            # Killed in mid-stream, while it holds events it has not acknowledged (in its queue, with the
            # handler, or committed and not yet acknowledged).
            publishing = asyncio.create_task(asyncio.to_thread(publish_all, device_broker, batch))
            await wait_for(lambda: group.counters.received > n // 5, timeout=30, what="the workers busy")
            victim = group.pids()[1]
            os.kill(victim, signal.SIGKILL)
            await publishing
            await wait_for(lambda: 0 not in group.pids() and victim not in group.pids(), timeout=30,
                           what="the killed worker started again")
        else:
            await asyncio.to_thread(publish_all, device_broker, batch)

        async def stored() -> bool:
            if agent_task.done():
                agent_task.result()
            return sum(r["events"] for r in await merged_rows(api, device_id)) >= n

        await wait_for(stored, timeout=start + SIZE + LATENESS - time.time() + 30, interval=0.5,
                       what="every event in the hub's windows")
        await asyncio.sleep(1.0)  # anything counted twice would have arrived by now
        rows = await merged_rows(api, device_id)
        if not kill:
            await wait_for(lambda: group.counters.processed == n, timeout=10, what="the workers' counts summed")
            reported = await state.reported(device_id, publish=False)
            assert reported.subscriptions["meters"].processed == n
            (handler,) = reported.handlers
            assert handler.processed == n, "the workers' handler replicas count in the handler's report"
    return rows, hub_rows(tmp_path / "hub.db", device_id), n


@pytest.mark.parametrize("kill", [False, True], ids=["steady", "sigkill-one-worker"])
async def test_two_workers_count_every_event_once(
    device_broker: Mosquitto,
    cloud_broker: Mosquitto,
    handler_images: dict[str, str],
    docker_client: Any,
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
    kill: bool,
) -> None:
    with dead_letters(device_broker, topic_prefix) as letters:
        rows, stored, n = await run(device_broker, cloud_broker, device_id, topic_prefix, tmp_path, kill=kill)
    assert not letters.records, [(d.reason, d.detail) for d in letters.records]
    # One row per window and group in the API, however many parts it was stored as.
    assert len({(r["group"], r["window_start"]) for r in rows}) == len(rows)
    per_group = Counter[str]()
    for row in rows:
        per_group[row["group"]] += row["events"]
        assert row["fields"]["v"]["count"] == row["events"]
    want = {f"topic[2]=m{g}": sum(1 for i in range(n) if i % 3 == g) for g in range(3)}
    assert dict(per_group) == want, "each event once"
    total = sum(r["fields"]["v"]["sum"] for r in rows)
    assert total == sum(range(n))
    shares = Counter[int]()
    for r in stored:
        shares[int(r["window_id"].rsplit("/", 1)[1])] += r["events"]  # the part: the id's last segment
    assert set(shares) == {0, 1}, f"both workers took a share: {shares}"
    assert min(shares.values()) > n // 10, shares
