"""Supervised handler containers on the real Docker engine (issue 5).

A handler killed with SIGKILL again and again is restarted on the backoff schedule and marked failed; an agent
killed with kill -9 and started again leaves no orphan and never touches another device's containers; a pool
of replicas grows under load and shrinks once the load is gone. Hardening is in test_runtime_hardening.py.

Every Docker call of a test that runs an agent in-process goes through a thread: a blocking call on the event
loop would stall the agent under test (and skew the restart timings measured here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from edge_agent.runtime.containers import LABEL_HANDLER, LABEL_REPLICA
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import QUICK_RESTARTS, agent_document
from tests.support.daemons import agent_process
from tests.support.engine import HANDLER_IMAGES, containers_of, ensure_handler_images, remove_labelled
from tests.support.mqtt_clients import dead_letter_reasons, dead_letters, publish_all
from tests.support.readers import outbox_results
from tests.support.rig import Rig
from tests.support.running import running_agent, wait_for
from tests.support.workloads import TEMP_C, temperature_events, temps_subscription

pytestmark = pytest.mark.integration

SLOW_IMAGE = "edgefleet/slow:dev"
IMAGES = (*HANDLER_IMAGES, SLOW_IMAGE)


@pytest.fixture(scope="module")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The example handlers plus slow (containers/build.sh builds every handler folder)."""
    return ensure_handler_images(docker_client, IMAGES)


def started_at(container: Container) -> float:
    """State.StartedAt of ``inspect`` as epoch seconds (the engine writes nanoseconds; keep microseconds)."""
    stamp = container.attrs["State"]["StartedAt"]
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


# -- 1. supervision: SIGKILL again and again --------------------------------------------------------------

BACKOFF = {"restart_backoff": "0.5s", "restart_max": "4s", "max_failures": 3}
EXPECTED_DELAYS = (0.5, 1.0, 2.0)  # restart_backoff x 2^n for failures 1..3
# Slack for what a restart costs beyond its delay (remove the dead container, create, attach, start) on a
# shared 2-core machine.
RESTART_SLACK = 2.0
SLOW_EVENT_MS = 3000  # each event keeps the handler busy for 3 s: every kill hits a container with work in flight


async def test_sigkilled_handler_restarts_on_backoff_then_is_marked_failed(
    rig: Rig,
    docker_client: docker.DockerClient,
    images: dict[str, str],
) -> None:
    """Four kills, each of the container the agent just started, are four consecutive failures: no reply ever
    comes back (a reply resets the count, hence a handler that takes 3 s per event and a kill within ~0.1 s of
    each start). The restart happens on the next batch, which is always there: six events were published.

    Failures 1-3 are restarted after 0.5, 1 and 2 s; the third marks the handler failed (next attempt no sooner
    than restart_max = 4 s later), so the fourth kill, about 2 s after it, is not restarted: the events left are
    dead-lettered ``handler-unavailable`` at once and the runtime reports ``failed``.
    """
    config = rig.agent_config(
        cloud_port=None,
        handlers=[{"name": "slow", "image": SLOW_IMAGE, "env": {"DELAY_MS": str(SLOW_EVENT_MS)},
                   "event_timeout": "60s"}],
        subscriptions=[{"name": "slow", "topic": f"{rig.prefix}/slow/+", "handler": "slow",
                        "window": {"size": "1s"}, "stats": ["count"]}],
        runtime=BACKOFF,
    )
    events = [(f"{rig.prefix}/slow/e{i}", json.dumps({"n": i}).encode()) for i in range(6)]
    kills: list[tuple[str, float, float]] = []  # container id, its StartedAt, when the kill returned
    states: list[str] = []

    def newest_unkilled() -> Container | None:
        seen = {k[0] for k in kills}
        fresh = [c for c in containers_of(docker_client, rig.device_id, "slow") if c.id not in seen]
        return fresh[0] if fresh else None

    def kill(container: Container) -> None:
        container.reload()
        start = started_at(container)
        with contextlib.suppress(docker.errors.APIError):  # 409 / 404: it died already, which is as good
            container.kill()  # SIGKILL
        kills.append((str(container.id), start, time.time()))

    with dead_letters(rig.broker, rig.prefix) as letters:
        async with running_agent(config) as (state, agent_task):
            runtime: Any = state.runtimes["slow"]

            async def watch_state() -> None:
                while True:
                    if not states or states[-1] != runtime.state:
                        states.append(runtime.state)
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch_state(), name="test.state-watch")
            try:
                await asyncio.to_thread(publish_all, rig.broker, events)
                for n in range(4):
                    found: list[Container] = []

                    async def started(into: list[Container] = found) -> bool:
                        container = await asyncio.to_thread(newest_unkilled)
                        if container is not None:
                            into.append(container)
                        return bool(into)

                    await wait_for(started, timeout=30, interval=0.02, what=f"handler container #{n} running",
                                   detail=lambda: (states, dead_letter_reasons(letters)))
                    await asyncio.to_thread(kill, found[0])
                await wait_for(lambda: len(letters.records) >= len(events), timeout=20,
                               what="every event dead-lettered", detail=lambda: (states, dead_letter_reasons(letters)))
                last_kill = kills[-1][2]
                after = time.time() - last_kill
                report = await state.reported(rig.device_id)
                running_now = await asyncio.to_thread(containers_of, docker_client, rig.device_id, "slow")
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

            gaps = [kills[i + 1][1] - kills[i][2] for i in range(3)]
            starts = [kills[i + 1][1] - kills[i][1] for i in range(3)]
            reasons = [dead_letter_reasons(letters)[payload] for _topic, payload in events]
            print(f"\nrestart delays (kill -> next StartedAt): {[f'{g:.2f}' for g in gaps]} s "
                  f"(start -> start {[f'{s:.2f}' for s in starts]} s; backoff {EXPECTED_DELAYS}); "
                  f"states {states}; reasons {reasons}; all dead-lettered {after:.2f}s after the 4th kill")
            for gap, delay in zip(gaps, EXPECTED_DELAYS, strict=True):
                assert delay - 0.05 <= gap <= delay + RESTART_SLACK, (gaps, EXPECTED_DELAYS)
            assert gaps[2] > gaps[0], gaps  # grows: 0.5 -> 2 s, far beyond the noise of a restart's cost
            assert reasons == ["handler-exited"] * 4 + ["handler-unavailable"] * 2
            assert "failed" in letters.records[-1].detail
            assert runtime.restarts == 3
            assert runtime.state == "failed"
            assert "restarting" in states
            assert [(h.name, h.state, h.restarts, h.healthy) for h in report.handlers] == [("slow", "failed", 3, False)]
            assert running_now == [], "a failed handler is not restarted before restart_max"
            assert not agent_task.done()


# -- 2. kill -9 of the agent: no orphan, another device untouched -----------------------------------------


async def test_agent_kill9_restart_leaves_no_orphan_and_spares_another_device(
    device_broker: Mosquitto,
    docker_client: docker.DockerClient,
    images: dict[str, str],
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    other_id = f"{device_id}-other"
    expected = [("passthrough", "0"), ("passthrough", "1"), ("temp-c", "0")]

    def config(device: str, prefix: str, handlers: list[dict[str, Any]]) -> dict[str, Any]:
        subs = [temps_subscription(prefix)]
        if any(h["name"] == "passthrough" for h in handlers):
            subs.append({"name": "raw", "topic": f"{prefix}/raw/+", "handler": "passthrough",
                         "window": {"size": "1s"}, "stats": ["count"]})
        return agent_document(device_id=device, data_dir=tmp_path / device / "data", device_port=device_broker.port,
                              prefix=prefix, handlers=handlers, subscriptions=subs, runtime=QUICK_RESTARTS)

    mine = config(device_id, topic_prefix, [TEMP_C, {"name": "passthrough", "image": "edgefleet/passthrough:dev",
                                                       "replicas": 2}])
    other = config(other_id, f"{topic_prefix}o", [TEMP_C])

    def snapshot(device: str, *, running: bool = True) -> dict[str, tuple[str, str, str]]:
        """container id -> (handler, replica, StartedAt) of ``device``'s containers."""
        return {
            str(c.id): (c.labels[LABEL_HANDLER], c.labels[LABEL_REPLICA], c.attrs["State"]["StartedAt"])
            for c in containers_of(docker_client, device, running=running)
        }

    def slots(snap: dict[str, tuple[str, str, str]]) -> list[tuple[str, str]]:
        return sorted((h, r) for h, r, _s in snap.values())

    try:
        with agent_process(other, tmp_path / "other") as other_agent, agent_process(mine, tmp_path / "mine") as agent:
            await other_agent.start()
            others_before = await asyncio.to_thread(snapshot, other_id)
            await agent.start()
            before = await asyncio.to_thread(snapshot, device_id)
            assert slots(before) == expected

            agent.kill()
            left = await asyncio.to_thread(snapshot, device_id, running=False)
            started = time.monotonic()
            await agent.start()
            restart_seconds = time.monotonic() - started
            after_all = await asyncio.to_thread(snapshot, device_id, running=False)
            after_running = await asyncio.to_thread(snapshot, device_id)
            temps, _c = temperature_events(topic_prefix, 20, seed=9)
            await asyncio.to_thread(publish_all, device_broker, temps)
            await wait_for(
                lambda: sum(r["events"] for r in outbox_results(tmp_path / device_id / "data" / "outbox.sqlite")
                            if r["subscription"] == "temps") >= len(temps),
                timeout=30, what="the restarted agent processes events", detail=agent.tail,
            )
            others_after = await asyncio.to_thread(snapshot, other_id)
            assert other_agent.running, other_agent.tail()
            print(f"\nkill -9: {len(left)} containers left behind; restart took {restart_seconds:.2f}s; after: "
                  f"{slots(after_all)} (all states), {len(after_running)} running; other device "
                  f"{sorted(others_before)} -> {sorted(others_after)}")
            assert set(left) == set(before), "kill -9 runs no cleanup: the containers are still there"
            assert slots(after_all) == expected, "exactly one container per handler replica, none orphaned"
            assert after_all == after_running
            assert not set(after_all) & set(before), "what the killed agent left was replaced"
            assert others_after == others_before, "another device's containers untouched (same ids, same start)"
            assert slots(others_after) == [("temp-c", "0")]
    finally:
        remove_labelled(docker_client, other_id)


# -- 3. replicas follow the load ----------------------------------------------------------------------------

DELAY_MS = 20  # capacity of one replica: about 50 events/s
RATE = 100  # events/s: twice one replica's capacity
GROW_DEADLINE = 60.0
SHRINK_DEADLINE = 90.0


class StillScaledUp(AssertionError):
    """The replicas did not come back to ``replicas`` once the load stopped (growing is asserted plainly)."""


async def test_replicas_grow_under_load_and_shrink_when_it_stops(
    rig: Rig,
    docker_client: docker.DockerClient,
    images: dict[str, str],
) -> None:
    """Observable behaviour only: how many containers of the handler run, sampled through the Docker SDK."""
    from tests.support.mqtt_clients import PacedPublisher

    config = rig.agent_config(
        cloud_port=None,
        handlers=[{"name": "slow", "image": SLOW_IMAGE, "env": {"DELAY_MS": str(DELAY_MS)}, "replicas": 1,
                   "max_replicas": 3, "batch_size": 20, "event_timeout": "10s"}],
        subscriptions=[{"name": "load", "topic": f"{rig.prefix}/load/+", "handler": "slow",
                        "window": {"size": "1s"}, "stats": ["count"]}],
    )
    seconds = int(GROW_DEADLINE) + 10
    messages = [(f"{rig.prefix}/load/s{i % 4}", json.dumps({"v": i}).encode()) for i in range(RATE * seconds)]
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()

    async def count() -> int:
        n = len(await asyncio.to_thread(containers_of, docker_client, rig.device_id, "slow"))
        samples.append((round(time.monotonic() - t0, 1), n))
        return n

    async def grown() -> bool:
        return await count() > 1

    async def back_to_one() -> bool:
        return await count() == 1

    async with running_agent(config) as (state, agent_task):
        assert await count() == 1
        with PacedPublisher(rig.broker, messages, RATE) as publisher:
            await wait_for(grown, timeout=GROW_DEADLINE, interval=0.5, what="a second replica under load",
                           detail=lambda: samples[-5:])
            grown_at = time.monotonic() - t0
        assert publisher.error is None
        stopped_at = time.monotonic() - t0
        print(f"\nreplicas: >1 at {grown_at:.1f}s, load stopped at {stopped_at:.1f}s")
        shrink_error = None
        try:
            await wait_for(back_to_one, timeout=SHRINK_DEADLINE, interval=0.5,
                           what="back to one replica after the load stopped", detail=lambda: samples[-5:])
        except AssertionError as exc:
            shrink_error = exc
        peak = max(n for _t, n in samples)
        print(f"replicas: {samples[-1][1]} at {samples[-1][0]:.1f}s; peak {peak}; "
              f"{state.dispatchers['load'].counters.processed} events processed")
        assert peak <= 3, samples
        assert not agent_task.done()
        if shrink_error is not None:
            raise StillScaledUp(f"{shrink_error}; backlog {state.dispatchers['load'].backlog}") from shrink_error
