"""The hub end to end on a real mosquitto: batch in, exact-range ack out, stored once, visible through the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_protocol.aggregate import FieldAccumulator, WindowResult, window_id
from edge_protocol.messages import Ack, AggregateBatch, SequencedResult, Status
from edge_protocol.topics import Topics
from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto
from tests.support.running import hub_config, serving_hub, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOKEN = "integration-token"


def make_batch(device: str, seqs: list[int], *, start: float = 1_700_000_000.0) -> AggregateBatch:
    records = []
    for seq in seqs:
        acc = FieldAccumulator()
        for i, value in enumerate((20.0, 21.0, 25.0)):
            acc.add(value + seq, start + i)
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
            stats=["count", "mean", "min", "max"],
        )
        records.append(SequencedResult(seq=seq, result=result))
    return AggregateBatch(device=device, sent_at=time.time(), records=records)


@contextlib.asynccontextmanager
async def device_client(broker: Mosquitto, topics: Topics, device: str) -> AsyncIterator[aiomqtt.Client]:
    """An agent stand-in: MQTT v5, subscribed to its own acks."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"agent-{device}", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(topics.acks(device), qos=1)
        yield client


async def next_ack(client: aiomqtt.Client, timeout: float = 10.0) -> Ack:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return Ack.model_validate_json(message.payload)
    raise AssertionError("the message stream ended")


async def rejected(api: str, reason: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{api}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edgefleet_hub_messages_rejected_total" and sample.labels == {"reason": reason}:
                return sample.value
    return 0.0


async def hub_cli(api: str, *args: str, token: str = TOKEN) -> tuple[int, str, str]:
    """``python -m hub ARGS`` in a subprocess, pointed at ``api`` through the environment."""
    env = {**os.environ, "EDGEFLEET_HUB_URL": api, "EDGEFLEET_HUB_TOKEN": token, "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", *args, cwd=REPO, env=env, stdout=-1, stderr=-1
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_batches_are_acked_by_range_stored_once_and_shown_by_the_cli(
    cloud_broker: Mosquitto, topic_prefix: str, device_id: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    config = hub_config(cloud_broker, topic_prefix, tmp_path / "hub.db", token=TOKEN)
    batch = make_batch(device_id, [1, 2, 3, 5])  # 4 is missing: the hub must not ack it
    async with serving_hub(config) as (api, _hub), device_client(cloud_broker, topics, device_id) as agent:
        await agent.publish(topics.aggregates(device_id), batch.model_dump_json(), qos=1)
        assert await next_ack(agent) == Ack(device=device_id, ranges=[(1, 3), (5, 5)])

        # A resend (the agent did not get the ack in time) is acked again and stored once.
        await agent.publish(topics.aggregates(device_id), batch.model_dump_json(), qos=1)
        assert await next_ack(agent) == Ack(device=device_id, ranges=[(1, 3), (5, 5)])

        # Garbage is counted and the hub carries on: the next batch, queued behind it, is acked.
        before = await rejected(api, "not_json")
        await agent.publish(topics.aggregates(device_id), b"\x00garbage", qos=1)
        await agent.publish(topics.aggregates(device_id), make_batch(device_id, [4]).model_dump_json(), qos=1)
        assert await next_ack(agent) == Ack(device=device_id, ranges=[(4, 4)])
        assert await rejected(api, "not_json") == before + 1

        code, out, err = await hub_cli(api, "aggregates", "--json", "--device", device_id)
        assert code == 0, err
        windows = json.loads(out)
        expected_ids = [r.result.id for r in batch.records] + [make_batch(device_id, [4]).records[0].result.id]
        assert sorted(w["window_id"] for w in windows) == sorted(expected_ids)  # the resend added nothing
        five = next(w for w in windows if w["window_id"] == batch.records[3].result.id)
        assert five["fields"]["celsius"]["mean"] == pytest.approx(22.0 + 5)
        assert (five["device"], five["subscription"], five["group"], five["events"]) == (device_id, "temp", "room-1", 3)

        code, out, err = await hub_cli(api, "aggregates", "--device", device_id, "--limit", "2")
        assert code == 0, err
        assert device_id in out
        assert "celsius" in out

        code, _, err = await hub_cli(api, "aggregates", token="wrong")
        assert (code, err.strip()) == (1, "hub: the hub refused the token")


async def test_status_messages_update_the_device_list(
    cloud_broker: Mosquitto, topic_prefix: str, device_id: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    config = hub_config(cloud_broker, topic_prefix, tmp_path / "hub.db")
    async with (
        serving_hub(config) as (api, _hub),
        device_client(cloud_broker, topics, device_id) as agent,
        httpx.AsyncClient(base_url=api) as http,
    ):
        online = Status(device=device_id, online=True, agent_version="9.9.9", ts=time.time())
        await agent.publish(topics.status(device_id), online.model_dump_json(), qos=1, retain=True)

        async def listed(state: bool) -> bool:
            devices = (await http.get("/v1/devices")).json()
            return any(d["id"] == device_id and d["online"] is state for d in devices)

        await wait_for(lambda: listed(True), timeout=10, what="the device online in /v1/devices")
        offline = Status(device=device_id, online=False, agent_version="9.9.9", ts=time.time())
        await agent.publish(topics.status(device_id), offline.model_dump_json(), qos=1, retain=True)
        await wait_for(lambda: listed(False), timeout=10, what="the device offline in /v1/devices")
        await agent.publish(topics.status(device_id), b"", qos=1, retain=True)  # clear the retained status


async def test_the_hub_resubscribes_after_a_broker_restart(
    fresh_broker: Callable[..., Mosquitto], topic_prefix: str, device_id: str, tmp_path: Path
) -> None:
    broker = fresh_broker()
    topics = Topics(topic_prefix)
    async with serving_hub(hub_config(broker, topic_prefix, tmp_path / "hub.db")):
        async with device_client(broker, topics, device_id) as agent:
            await agent.publish(topics.aggregates(device_id), make_batch(device_id, [1]).model_dump_json(), qos=1)
            assert (await next_ack(agent)).ranges == [(1, 1)]
        await asyncio.to_thread(broker.restart)

        # No broker session: what was sent while the hub was away is the agent's to resend; so resend until acked.
        async with device_client(broker, topics, device_id) as agent:
            payload = make_batch(device_id, [2]).model_dump_json()
            deadline = time.monotonic() + 30
            while True:
                await agent.publish(topics.aggregates(device_id), payload, qos=1)
                with contextlib.suppress(TimeoutError):
                    assert (await next_ack(agent, timeout=1.0)).ranges == [(2, 2)]
                    break
                assert time.monotonic() < deadline, "the hub did not come back after the broker restart"


async def test_hub_serve_stops_cleanly_on_sigterm(cloud_broker: Mosquitto, topic_prefix: str, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[broker]\nhost = "{cloud_broker.host}"\nport = {cloud_broker.port}\nprefix = "{topic_prefix}"\n'
        f'[store]\nurl = "sqlite:///{tmp_path / "hub.db"}"\n[api]\nport = {port}\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "serve", "--config", str(config), cwd=REPO, stdout=-1, stderr=-1
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def healthy() -> bool:
                assert proc.returncode is None, "hub serve exited early"
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(healthy, timeout=30, what="hub serve to answer /healthz")
        proc.terminate()
        async with asyncio.timeout(15):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "SIGTERM: stopping" in err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
