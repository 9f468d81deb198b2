"""The agent process SIGKILLed while events flow: intact outbox, no orphan containers, nothing lost, duplicates counted.

The agent runs as `edge-agent run --config` (a real process, really killed); the hub runs in-process on a broker
of this test alone. The hub stores each window id once, so duplicates can only come from the intake: events whose
effect was committed but whose acknowledgement never reached the device broker are delivered again.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import (
    SENTINEL_GROUP,
    TEMP_C,
    PacedPublisher,
    Totals,
    agent_process,
    agent_toml,
    dead_letters,
    hub_rows,
    integrity_check,
    labelled_containers,
    outbox_pending,
    publish_all,
    running_hub,
    sentinel_event,
    temperature_events,
    temps_subscription,
)
from tests.support.running import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("n_events", "kills", "rate"),
    [
        pytest.param(5_000, 1, 800.0, id="once"),
        pytest.param(10_000, 5, 400.0, id="five-times", marks=pytest.mark.slow),
    ],
)
async def test_agent_sigkill_mid_stream(
    fresh_broker: Any,
    docker_client: Any,
    handler_images: dict[str, str],
    device_id: str,
    topic_prefix: str,
    tmp_path: Path,
    n_events: int,
    kills: int,
    rate: float,
) -> None:
    device, cloud = fresh_broker(), fresh_broker()
    messages, celsius = temperature_events(topic_prefix, n_events, seed=n_events + kills)
    data_dir = tmp_path / "agent-data"
    outbox = data_dir / "outbox.sqlite"
    hub_db = tmp_path / "hub.db"
    config = agent_toml(
        device_id=device_id,
        data_dir=data_dir,
        device_port=device.port,
        cloud_port=cloud.port,
        prefix=topic_prefix,
        handlers=[TEMP_C],
        subscriptions=[temps_subscription(topic_prefix)],
    )

    def sensor_rows() -> list[dict[str, Any]]:
        return [r for r in hub_rows(hub_db, device_id) if r["group"] != SENTINEL_GROUP]

    def one_handler_container() -> bool:
        found = labelled_containers(docker_client, device_id)
        return len(found) == 1 and found[0].status == "running"

    killed_at: list[int] = []
    with (
        agent_process(config, tmp_path / "agent") as agent,
        dead_letters(device, topic_prefix) as letters,
    ):
        async with running_hub(cloud, topic_prefix, hub_db) as (_api, hub_task):
            await agent.start()
            await wait_for(one_handler_container, timeout=15, what="one handler container", detail=agent.tail)
            with PacedPublisher(device, messages, rate) as publisher:
                for kill in range(kills):
                    started = time.time()
                    # Some windows with events processed by *this* run of the agent are committed and stored.
                    await wait_for(
                        lambda started=started: any(r["window_start"] >= started for r in sensor_rows()),
                        timeout=30,
                        what=f"windows stored before kill {kill + 1}",
                        detail=agent.tail,
                    )
                    if kill == 0:
                        assert not publisher.done.is_set(), "events must still be flowing at the first kill"
                    killed_at.append(publisher.acked)
                    agent.kill()
                    assert integrity_check(outbox) == "ok"
                    # kill -9 leaves the handler container behind; the next start must replace it, not add one.
                    await agent.start()
                    await wait_for(one_handler_container, timeout=15, what="one handler container after restart",
                                   detail=lambda: labelled_containers(docker_client, device_id))
                await wait_for(publisher.done.is_set, timeout=60, what="every event acknowledged by the device broker")
                assert publisher.error is None
            await asyncio.to_thread(publish_all, device, [sentinel_event(topic_prefix)])
            await wait_for(
                lambda: any(r["group"] == SENTINEL_GROUP for r in hub_rows(hub_db, device_id)),
                timeout=60,
                what="the sentinel's window stored (so every earlier window was committed)",
                detail=lambda: f"{Totals(sensor_rows())}; {agent.tail(5)}",
            )
            await wait_for(lambda: outbox_pending(outbox) == 0, timeout=30, what="the outbox emptied by the hub's acks")
            assert one_handler_container()
            assert not hub_task.done()
            assert agent.running, agent.tail()

            totals = Totals(sensor_rows(), "c")
            duplicates = totals.events - len(celsius)
            print(  # the figures for the report (pytest -s, or the captured output of a failure)
                f"\nagent kill -9 x{kills}: published={len(celsius)} stored={totals.events} duplicates={duplicates} "
                f"windows={totals.rows} killed after {killed_at} events published; dead letters={len(letters.records)}"
            )
            assert totals.rows == totals.distinct, "a window stored twice"
            assert totals.events >= len(celsius), f"{len(celsius) - totals.events} events lost"
            assert totals.count == totals.events
            assert not letters.records, [(d.reason, d.detail) for d in letters.records[:5]]

        # A clean stop removes the handler container: nothing labelled with the device id is left.
        assert await asyncio.to_thread(agent.stop) == 0, agent.tail()
        await wait_for(lambda: not labelled_containers(docker_client, device_id), timeout=15,
                       what="no container left after the agent stopped")

    if duplicates:
        pytest.xfail(
            f"{duplicates} events counted twice after kill -9: redelivered events whose effect was already "
            "committed (in-flight packet ids are not yet recorded in the commit)"
        )
    assert totals.events == len(celsius)
    assert math.isclose(totals.sum, math.fsum(celsius), rel_tol=1e-9, abs_tol=1e-6)
    assert totals.min == min(celsius)
    assert totals.max == max(celsius)
