"""Issue 2's acceptance: events -> container handler -> windows -> outbox -> cloud broker -> hub, exactly."""

from __future__ import annotations

import asyncio
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import QUICK_CLOUD, QUICK_RESTARTS, agent_config
from tests.support.mqtt_clients import dead_letters, publish_all, sent_windows
from tests.support.readers import assert_stored_as_held, hub_rows
from tests.support.running import running_agent, running_hub, wait_for

pytestmark = pytest.mark.integration


def _progress(state: Any) -> str:
    uplink = state.uplink
    return (f"counters={state.counters()} outbox_pending={state.outbox.pending if state.outbox else None} "
            f"sent={uplink.sent if uplink else None} acked={uplink.acked if uplink else None} "
            f"resends={uplink.resends if uplink else None}")


MALFORMED = [b"not json", b'{"f": "warm"}', b"[1, 2]", b'{"f": true}', b"\xff\xfe garbage"]


async def test_ten_thousand_events_reach_the_hub_exactly_once(
    device_broker: Mosquitto,
    cloud_broker: Mosquitto,
    handler_images: dict[str, str],
    docker_client: Any,
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(20261127)
    messages: list[tuple[str, bytes]] = []
    celsius: list[float] = []
    for i in range(10_000):
        topic = f"{topic_prefix}/sensors/s{i % 4}/temperature"
        if i % 100 == 37:
            messages.append((topic, MALFORMED[(i // 100) % len(MALFORMED)]))
            continue
        f = round(rng.uniform(-40.0, 120.0), 3)
        celsius.append((f - 32.0) * 5.0 / 9.0)
        messages.append((topic, orjson.dumps({"f": f})))
    malformed = len(messages) - len(celsius)
    assert malformed == 100
    metrics_port = free_port()

    config = agent_config(
        device_id=device_id,
        data_dir=tmp_path / "agent",
        device_port=device_broker.port,
        cloud_port=cloud_broker.port,
        cloud_extra=QUICK_CLOUD,
        prefix=topic_prefix,
        handlers=[{"name": "temp-c", "image": "edgefleet/temp-c:dev"}],
        status={"listen": f"127.0.0.1:{metrics_port}"},
        subscriptions=[{
            "name": "temps",
            "topic": f"{topic_prefix}/sensors/+/temperature",
            "handler": "temp-c",
            "window": {"size": "1s"},
            "stats": ["count", "sum", "min", "max", "mean"],
        }],
        runtime=QUICK_RESTARTS,
    )
    deadletters = dead_letters(device_broker, topic_prefix)
    sent = sent_windows(cloud_broker, topic_prefix, device_id)
    try:
        async with (
            running_hub(cloud_broker, topic_prefix, tmp_path / "hub.db") as (api, _hub),
            running_agent(config) as (state, agent_task),
        ):
            await asyncio.to_thread(publish_all, device_broker, messages)

            async def stored() -> list[dict[str, Any]]:
                resp = await api.get("/v1/aggregates", params={"device": device_id, "limit": 10_000})
                resp.raise_for_status()
                rows: list[dict[str, Any]] = resp.json()
                return rows

            async def all_stored() -> bool:
                return sum(r["events"] for r in await stored()) >= len(celsius)

            await wait_for(all_stored, timeout=90, interval=0.5, what="every valid event in the hub's windows",
                           detail=lambda: _progress(state))
            await wait_for(lambda: len(deadletters.records) >= malformed, timeout=30, what="dead letters")
            await wait_for(lambda: state.outbox is not None and state.outbox.pending == 0, timeout=30,
                           what="the outbox emptied by the hub's acks")

            rows = await stored()
            assert sum(r["events"] for r in rows) == len(celsius)
            # Each stored window is, value for value, one the agent sent, and every window sent is stored.
            stored_rows = hub_rows(tmp_path / "hub.db", device_id)
            assert_stored_as_held(stored_rows, sent.received())
            assert {r["window_id"] for r in stored_rows} == {r["id"] for r in sent.received()}
            c_fields = [r["fields"]["c"] for r in rows]
            assert sum(f["count"] for f in c_fields) == len(celsius)
            assert min(f["min"] for f in c_fields) == min(celsius)
            assert max(f["max"] for f in c_fields) == max(celsius)
            assert math.isclose(math.fsum(f["sum"] for f in c_fields), math.fsum(celsius), rel_tol=1e-9)

            assert len(deadletters.records) == malformed
            assert all(d.reason in ("invalid-json", "handler-error") and d.detail for d in deadletters.records)
            assert {d.payload_bytes() for d in deadletters.records} == set(MALFORMED)
            counters = state.dispatchers["temps"].counters
            assert counters.processed == len(celsius)
            assert sum(counters.dead_lettered.values()) == malformed
            assert not agent_task.done(), "the agent must still be running"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as local:
                text = (await local.get("/metrics")).text
                health = await local.get("/healthz")
            assert f'edgefleet_agent_events_processed_total{{subscription="temps"}} {float(len(celsius))}' in text
            assert 'edgefleet_agent_handler_up{handler="temp-c"} 1.0' in text
            assert health.status_code == 200, health.text
            status = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "edge_agent", "status", "--url",
                                 f"http://127.0.0.1:{metrics_port}", "--json"],
                capture_output=True, text=True, timeout=30, check=True,
            )
            report = orjson.loads(status.stdout)
            assert report["subscriptions"]["temps"]["processed"] == len(celsius)
            assert report["handlers"][0]["state"] == "running"
    finally:
        deadletters.close()
        sent.close()
