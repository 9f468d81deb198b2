"""Issue 6 end to end: a window that spans an agent restart (graceful and kill -9), and quantiles in the hub.

Real mosquitto brokers, the passthrough handler in Docker, the hub in-process. Event time comes from the payload
(``event_time_field``), so the test decides which window every event belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from scripts.mosquitto import Mosquitto
from tests.support.agent_config import QUICK_CLOUD, QUICK_RESTARTS, agent_config, agent_document
from tests.support.daemons import agent_process
from tests.support.mqtt_clients import dead_letters, publish_all
from tests.support.readers import outbox_results
from tests.support.running import running_agent, running_hub, wait_for

pytestmark = pytest.mark.integration

PASSTHROUGH = {"name": "pass", "image": "edgefleet/passthrough:dev"}
def checkpointed_events(outbox: Path, window_start: float) -> int:
    """Events of the open window starting at ``window_start`` in the agent's checkpoints (read-only, WAL)."""
    if not outbox.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=10)) as db:
        try:
            rows = db.execute("SELECT state FROM checkpoints").fetchall()
        except sqlite3.OperationalError:
            return 0
    return sum(
        w["events"] for (state,) in rows for w in json.loads(state)["windows"] if w["start"] == window_start
    )


async def rows_of(api: httpx.AsyncClient, device: str, **params: Any) -> list[dict[str, Any]]:
    resp = await api.get("/v1/aggregates", params={"device": device, "limit": 1000, **params})
    resp.raise_for_status()
    rows: list[dict[str, Any]] = resp.json()
    return rows


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_a_window_spanning_an_agent_restart_is_one_complete_result(
    device_broker: Mosquitto,
    cloud_broker: Mosquitto,
    handler_images: dict[str, str],
    docker_client: Any,
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
    how: str,
) -> None:
    size, lateness = 6.0, 15.0
    data_dir = tmp_path / "agent-data"
    outbox = data_dir / "outbox.sqlite"
    config = agent_document(
        device_id=device_id,
        data_dir=data_dir,
        device_port=device_broker.port,
        cloud_port=cloud_broker.port,
        cloud_extra=QUICK_CLOUD,
        prefix=topic_prefix,
        handlers=[PASSTHROUGH],
        subscriptions=[{
            "name": "meters",
            "topic": f"{topic_prefix}/meters/+",
            "handler": "pass",
            "window": {"size": "6s"},
            "event_time_field": "t",
            "lateness": "15s",
            "fields": ["v"],
            "stats": ["count", "sum", "min", "max"],
        }],
    )
    rng = random.Random(f"restart-{how}")
    with (
        agent_process(config, tmp_path / "agent") as agent,
        dead_letters(device_broker, topic_prefix) as letters,
    ):
        async with running_hub(cloud_broker, topic_prefix, tmp_path / "hub.db") as (api, _hub):
            await agent.start()
            # The window open now by the wall clock; it closes at start + size + lateness.
            start = math.floor(time.time() / size) * size
            closes_at = start + size + lateness
            values = [round(rng.uniform(-500.0, 500.0), 3) for _ in range(100)]
            messages = [
                (f"{topic_prefix}/meters/m{i % 3}", orjson.dumps({"v": v, "t": start + size * i / len(values)}))
                for i, v in enumerate(values)
            ]
            first, second = messages[::2], messages[1::2]  # both halves spread over the whole window
            await asyncio.to_thread(publish_all, device_broker, first)
            await wait_for(lambda: checkpointed_events(outbox, start) == len(first), timeout=15,
                           what="the first half committed in the open window's checkpoint", detail=agent.tail)
            if how == "sigterm":
                assert await asyncio.to_thread(agent.stop) == 0, agent.tail()
            else:
                await asyncio.to_thread(agent.kill)
            # Checkpointed, not flushed early as a partial result.
            assert checkpointed_events(outbox, start) == len(first)
            assert outbox_results(outbox) == []
            await agent.start()
            assert time.time() < closes_at - 3, "the restart took too long for this test's window"
            await asyncio.to_thread(publish_all, device_broker, second)

            async def stored() -> bool:
                return bool(await rows_of(api, device_id))

            await wait_for(stored, timeout=closes_at - time.time() + 20, interval=0.5,
                           what="the window stored in the hub", detail=agent.tail)
            await wait_for(lambda: not outbox_results(outbox), timeout=15, what="the outbox emptied by the acks")
            rows = await rows_of(api, device_id)
            assert agent.running, agent.tail()

    assert [(r["window_start"], r["window_end"], r["part"], r["events"]) for r in rows] == [
        (start, start + size, 0, len(values))
    ], "one result for the window, holding the events of both runs"
    v = rows[0]["fields"]["v"]
    assert v["count"] == len(values)
    assert v["sum"] == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-9 * math.fsum(map(abs, values)))
    assert (v["min"], v["max"]) == (min(values), max(values))
    assert not letters.records, [(d.reason, d.detail) for d in letters.records]


async def test_quantiles_end_to_end(
    device_broker: Mosquitto,
    cloud_broker: Mosquitto,
    handler_images: dict[str, str],
    docker_client: Any,
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    size, lateness = 5.0, 10.0
    rng = random.Random(2000)
    # Both signs, zeros, and magnitudes over eight decades: the sketch's accuracy is relative to each value.
    values = [0.0 if i % 97 == 0 else rng.choice((1, 1, 1, -1)) * rng.lognormvariate(0.0, 3.0) for i in range(2000)]
    config = agent_config(
        device_id=device_id,
        data_dir=tmp_path / "agent",
        device_port=device_broker.port,
        cloud_port=cloud_broker.port,
        cloud_extra=QUICK_CLOUD,
        prefix=topic_prefix,
        handlers=[PASSTHROUGH],
        subscriptions=[{
            "name": "quantiles",
            "topic": f"{topic_prefix}/q/+",
            "handler": "pass",
            "window": {"size": "5s"},
            "event_time_field": "t",
            "lateness": "10s",
            "fields": ["v"],
            "stats": ["count", "p50", "p99"],
        }],
        runtime=QUICK_RESTARTS,
    )
    async with running_hub(cloud_broker, topic_prefix, tmp_path / "hub.db") as (api, _hub), running_agent(
        config
    ) as (_state, agent_task):
        start = math.floor(time.time() / size) * size
        messages = [
            (f"{topic_prefix}/q/s{i % 4}", orjson.dumps({"v": v, "t": start + size * i / len(values)}))
            for i, v in enumerate(values)
        ]
        await asyncio.to_thread(publish_all, device_broker, messages)

        async def stored() -> bool:
            if agent_task.done():
                agent_task.result()  # the agent died: show why
                raise AssertionError("the agent stopped")
            return bool(await rows_of(api, device_id))

        await wait_for(stored, timeout=start + size + lateness - time.time() + 20, interval=0.5,
                       what="the window stored in the hub")
        (row,) = await rows_of(api, device_id)
        (extra,) = await rows_of(api, device_id, stats="p37.5,p90")  # any quantile, from the stored sketch
    assert (row["window_start"], row["events"], row["stats"]) == (start, len(values), ["count", "p50", "p99"])
    stats = row["fields"]["v"]["stats"] | extra["fields"]["v"]["stats"]
    assert stats["count"] == len(values)
    ordered = sorted(values)
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p37.5", 0.375), ("p90", 0.9)):
        exact = ordered[math.floor(q * (len(ordered) - 1))]  # numpy's method="lower"
        assert stats[name] is not None, name
        assert abs(stats[name] - exact) <= 0.01 * abs(exact) * (1 + 1e-9), (name, stats[name], exact)
