"""Handlers that misbehave: an endless output line, a crash on every event, a hang. The agent survives each.

One tiny image, built here from edgefleet/base:bookworm (no network: FROM a local image, COPY, ENTRYPOINT) and
removed afterwards, speaks the handler protocol by hand and misbehaves on request: {"do": "endless" | "crash" |
"hang"}, or takes its time ({"do": "sleep", "s": seconds}); any other event gets a result {"v": <its "v">}.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import orjson
import pytest

from scripts.mosquitto import Mosquitto
from tests.support.daemons import agent_process
from tests.support.engine import containers_of
from tests.support.mqtt_clients import dead_letters, publish_all
from tests.support.readers import Totals, outbox_results
from tests.support.rig import Rig
from tests.support.running import running_agent, wait_for
from tests.support.workloads import TEMP_C, temperature_events, temps_subscription

pytestmark = pytest.mark.integration

RSS_LIMIT_KIB = 200 * 1024
EVENT_TIMEOUT = 1.0
# The default backoff (10 s x 2^n) is for devices; the behaviour under test is the same with shorter delays.
FAST_RESTARTS = {"restart_backoff": "0.2s", "restart_max": "5s"}

BAD_HANDLER = rb"""
import json, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # PID 1 ignores SIGTERM without a handler
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    msg = json.loads(line)
    if msg.get("kind") == "ping":
        out.write(b'{"kind":"pong","id":%d}\n' % msg["id"])
        out.flush()
        continue
    payload = msg.get("payload")
    do = payload.get("do") if isinstance(payload, dict) else None
    if do == "crash":
        os._exit(3)
    if do == "hang":
        while True:
            time.sleep(3600)
    if do == "sleep":
        time.sleep(payload["s"])
    if do == "endless":
        chunk = b"x" * 65536
        while True:
            os.write(1, chunk)
    value = payload.get("v", 0) if isinstance(payload, dict) else 0
    out.write(json.dumps({"kind": "result", "id": msg["id"], "values": {"v": value}}).encode() + b"\n")
    out.flush()
"""

DOCKERFILE = b"""FROM edgefleet/base:bookworm
COPY bad.py /app/bad.py
USER 65534:65534
ENTRYPOINT ["python3", "-u", "/app/bad.py"]
"""


@pytest.fixture(scope="module")
def bad_image(docker_client: docker.DockerClient, handler_images: dict[str, str]) -> Iterator[str]:
    """The misbehaving handler's image (tag), removed at the end of the module."""
    tag = f"edgefleet/test-bad-handler:{uuid.uuid4().hex[:8]}"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", DOCKERFILE), ("bad.py", BAD_HANDLER)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _logs = docker_client.images.build(
        fileobj=context, custom_context=True, tag=tag, labels={"edgefleet.test": "faults"}, rm=True, forcerm=True
    )
    try:
        yield tag
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(image.id, force=True)


def bad_spec(image: str) -> dict[str, Any]:
    return {
        "name": "bad",
        "image": image,
        "io": "stdio",  # it speaks on stdin/stdout, without the SDK: the attach stream's paths are tested here
        "event_timeout": f"{EVENT_TIMEOUT:g}s",
        "limits": {"memory": "64m", "cpus": 0.5, "pids": 16},
    }


def bad_subscription(prefix: str) -> dict[str, Any]:
    return {"name": "bad", "topic": f"{prefix}/bad/+", "handler": "bad", "window": {"size": "1s"}, "stats": ["count"]}


def event(prefix: str, name: str, payload: dict[str, Any]) -> tuple[str, bytes]:
    return f"{prefix}/bad/{name}", orjson.dumps(payload)


async def test_endless_line_is_rejected_and_memory_stays_bounded(
    docker_client: docker.DockerClient,
    bad_image: str,
    tmp_path: Path,
    rig: Rig,
) -> None:
    """The agent (a real process, for its RSS) reads a handler's endless line, rejects the event, stays small
    and keeps serving its other subscription meanwhile."""
    data_dir = tmp_path / "agent-data"
    config = rig.agent_document(
        data_dir=data_dir,
        handlers=[bad_spec(bad_image), TEMP_C],
        subscriptions=[bad_subscription(rig.prefix), temps_subscription(rig.prefix)],
        runtime=FAST_RESTARTS,
    )
    endless = event(rig.prefix, "endless", {"do": "endless"})
    temps, _celsius = temperature_events(rig.prefix, 200, seed=61)
    peak_rss = 0

    def sample() -> None:
        nonlocal peak_rss
        peak_rss = max(peak_rss, agent.memory_kib()[0])

    def temps_committed() -> int:
        results = outbox_results(data_dir / "outbox.sqlite")
        return Totals([r for r in results if r["subscription"] == "temps"]).events

    with agent_process(config, tmp_path / "agent") as agent, dead_letters(rig.broker, rig.prefix) as letters:
        await agent.start()
        start_rss, _ = agent.memory_kib()
        await asyncio.to_thread(publish_all, rig.broker, [endless])
        await wait_for(lambda: (sample(), bool(letters.records))[1], timeout=30, what="the endless event dead-lettered",
                       detail=agent.tail)
        # The handler goes on streaming its line (nothing replaces it until its next event): meanwhile the
        # agent's other subscription is served and memory stays flat.
        await asyncio.to_thread(publish_all, rig.broker, temps)
        await wait_for(lambda: (sample(), temps_committed() >= len(temps))[1], timeout=30,
                       what="the other subscription's events committed", detail=agent.tail)
        bad_running = containers_of(docker_client, rig.device_id)
        _rss, hwm = agent.memory_kib()
        record = letters.records[0]
        print(f"\nendless line: {record.reason} ({record.detail}); other subscription: {temps_committed()} events "
              f"committed meanwhile; agent RSS start {start_rss} KiB, peak sampled {peak_rss} KiB, VmHWM {hwm} KiB")
        assert [(d.reason, d.payload_bytes()) for d in letters.records] == [("handler-invalid-reply", endless[1])]
        assert "longer than" in record.detail
        assert temps_committed() == len(temps)
        assert len(bad_running) == 2, "both handler containers still running"
        assert agent.running, agent.tail()
        assert hwm < RSS_LIMIT_KIB, f"agent peak RSS {hwm} KiB"


async def test_events_flow_again_soon_after_an_endless_line(
    docker_client: docker.DockerClient,
    bad_image: str,
    tmp_path: Path,
    rig: Rig,
) -> None:
    config = rig.agent_config(
        handlers=[bad_spec(bad_image)],
        subscriptions=[bad_subscription(rig.prefix)],
        runtime=FAST_RESTARTS,
    )
    # Whatever the agent must close, it must close itself: with the cyclic GC off, less is closed for it by luck.
    gc.disable()
    try:
        await _endless_then_valid(config, rig.broker, rig.prefix)
    finally:
        gc.enable()


async def _endless_then_valid(config: Any, device_broker: Mosquitto, topic_prefix: str) -> None:
    endless = event(topic_prefix, "endless", {"do": "endless"})
    valid = [event(topic_prefix, "ok", {"v": i}) for i in range(5)]
    with dead_letters(device_broker, topic_prefix) as letters:
        async with running_agent(config) as (state, agent_task):
            counters = state.dispatchers["bad"].counters
            await asyncio.to_thread(publish_all, device_broker, [endless])
            await wait_for(lambda: bool(letters.records), timeout=30, what="the endless event dead-lettered")
            await asyncio.to_thread(publish_all, device_broker, valid)
            # event_timeout (1 s) + restart backoff (0.2 s) + docker stop (<= 3 s) + start: 10 s is generous.
            await wait_for(lambda: counters.processed + len(letters.records) - 1 >= len(valid), timeout=10,
                           what="the valid events processed on a new container", detail=state.counters)
            collateral = letters.records[1:]
            print(f"\nafter an endless line: {counters.processed} of {len(valid)} valid events processed, "
                  f"{[d.reason for d in collateral]} dead-lettered")
            # The container keeps streaming after its overlong line, so the next event is charged with a timeout.
            assert [d.reason for d in collateral] in ([], ["handler-timeout"])
            assert counters.processed == len(valid) - len(collateral)
            assert not agent_task.done()


async def test_crash_loop_is_dead_lettered_and_the_handler_restarted(
    docker_client: docker.DockerClient,
    bad_image: str,
    tmp_path: Path,
    rig: Rig,
) -> None:
    config = rig.agent_config(
        handlers=[bad_spec(bad_image)],
        subscriptions=[bad_subscription(rig.prefix)],
        runtime=FAST_RESTARTS,
    )
    crashes = [event(rig.prefix, "crash", {"do": "crash", "n": i}) for i in range(3)]
    valid = [event(rig.prefix, "ok", {"v": i}) for i in range(3)]
    with dead_letters(rig.broker, rig.prefix) as letters:
        async with running_agent(config) as (state, agent_task):
            runtime = state.runtimes["bad"]
            counters = state.dispatchers["bad"].counters
            first_container = runtime.container_id
            await asyncio.to_thread(publish_all, rig.broker, crashes + valid)
            await wait_for(lambda: counters.processed >= len(valid) and len(letters.records) >= len(crashes),
                           timeout=60, what="crashes dead-lettered and valid events processed",
                           detail=lambda: (state.counters(), runtime.restarts))
            print(f"\ncrash loop: {counters.dead_lettered} restarts={runtime.restarts}")
            assert sorted(d.payload_bytes() for d in letters.records) == sorted(p for _t, p in crashes)
            assert {d.reason for d in letters.records} == {"handler-exited"}
            assert counters.processed == len(valid)
            assert runtime.restarts >= len(crashes)
            assert runtime.healthy
            assert runtime.container_id not in (None, first_container)
            running = containers_of(docker_client, rig.device_id)
            assert [c.id for c in running] == [runtime.container_id]
            assert not agent_task.done()


async def test_hanging_handler_times_out_within_event_timeout(
    docker_client: docker.DockerClient,
    bad_image: str,
    tmp_path: Path,
    rig: Rig,
) -> None:
    config = rig.agent_config(
        handlers=[bad_spec(bad_image)],
        subscriptions=[bad_subscription(rig.prefix)],
        runtime=FAST_RESTARTS,
    )
    hang = event(rig.prefix, "hang", {"do": "hang"})
    valid = [event(rig.prefix, "ok", {"v": i}) for i in range(3)]
    with dead_letters(rig.broker, rig.prefix) as letters:
        async with running_agent(config) as (state, agent_task):
            counters = state.dispatchers["bad"].counters
            published = time.monotonic()
            await asyncio.to_thread(publish_all, rig.broker, [hang])
            await wait_for(lambda: bool(letters.records), timeout=10 * EVENT_TIMEOUT, what="the hang dead-lettered")
            elapsed = time.monotonic() - published
            await asyncio.to_thread(publish_all, rig.broker, valid)
            await wait_for(lambda: counters.processed >= len(valid), timeout=30, what="valid events after the hang",
                           detail=state.counters)
            print(f"\nhang: dead-lettered after {elapsed:.2f}s ({letters.records[0].detail})")
            assert [(d.reason, d.payload_bytes()) for d in letters.records] == [("handler-timeout", hang[1])]
            assert f"{EVENT_TIMEOUT:g}s" in letters.records[0].detail
            assert EVENT_TIMEOUT <= elapsed < EVENT_TIMEOUT + 2.0
            assert counters.processed == len(valid)
            assert not agent_task.done()


async def test_a_hang_before_more_input_than_the_pipes_hold_times_out(
    docker_client: docker.DockerClient,
    bad_image: str,
    tmp_path: Path,
    rig: Rig,
) -> None:
    """The hang comes first in a batch of 6.4 MB, more than every buffer between the agent and the container's
    stdin holds: the handler stops reading, so the batch cannot be written whole. The hang must still be
    declared ``event_timeout`` after the batch went out, and the rest of the batch processed by the next
    container."""
    timeout, sleep = 4.0, 3.0
    config = rig.agent_config(
        handlers=[{**bad_spec(bad_image), "event_timeout": f"{timeout:g}s"}],
        subscriptions=[bad_subscription(rig.prefix)],
        runtime=FAST_RESTARTS,
    )
    # While the handler sleeps on the first event, the hang and the large events queue up behind it and leave
    # as the next batch, in one write.
    slow = event(rig.prefix, "slow", {"do": "sleep", "s": sleep})
    hang = event(rig.prefix, "hang", {"do": "hang"})
    large = [event(rig.prefix, f"large{i}", {"v": i, "pad": "x" * 16_000}) for i in range(400)]
    with dead_letters(rig.broker, rig.prefix) as letters:
        async with running_agent(config) as (state, agent_task):
            counters = state.dispatchers["bad"].counters
            await asyncio.to_thread(publish_all, rig.broker, [slow])
            await wait_for(lambda: counters.received >= 1, timeout=10, what="the slow event taken in")
            published = time.monotonic()
            await asyncio.to_thread(publish_all, rig.broker, [hang, *large])
            assert time.monotonic() - published < sleep, "the batch behind the slow event was not queued in time"
            await wait_for(lambda: bool(letters.records), timeout=sleep + timeout + 10, what="the hang dead-lettered",
                           detail=state.counters)
            elapsed = time.monotonic() - published
            await wait_for(lambda: counters.processed >= 1 + len(large), timeout=60,
                           what="the large events after the hang", detail=state.counters)
            print(f"\nhang before 6.4 MB: dead-lettered {elapsed:.2f}s after the publish")
            assert [(d.reason, d.payload_bytes()) for d in letters.records] == [("handler-timeout", hang[1])]
            assert elapsed < sleep + timeout + 5.0
            assert counters.processed == 1 + len(large)
            assert not agent_task.done()
