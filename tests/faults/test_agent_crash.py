"""The agent process SIGKILLed while events flow: intact outbox, no orphan containers, nothing lost, duplicates counted.

The agent runs as `edge-agent run --config` (a real process, really killed); the hub runs in-process on a broker
of this test alone. The hub stores each window id once, so duplicates can only come from the intake: events whose
effect was committed but whose acknowledgement never reached the device broker are delivered again. The agent
reaches its broker through a proxy (`LinkProxy`) that can swallow its acknowledgements before the kill, so the
redelivery of committed events is exercised on purpose, not by luck; the agent's metrics endpoint tells how many
redeliveries it recognised.

`five-times` kills the agent five times while the stream runs (it ends only after the last restart), each time
restarting it at once by default, after 10 s with ``--soak`` (the events meanwhile wait in the broker session).
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest

from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto
from tests.faults.conftest import Outages
from tests.support.agent_config import QUICK_CLOUD
from tests.support.daemons import agent_process
from tests.support.engine import labelled_containers
from tests.support.link_proxy import LinkProxy
from tests.support.mqtt_clients import PacedPublisher, dead_letters, publish_all
from tests.support.prometheus import scrape
from tests.support.readers import (
    Totals,
    assert_events_per_group,
    hub_rows,
    integrity_check,
    outbox_losses,
    outbox_pending,
)
from tests.support.rig import Rig
from tests.support.running import running_hub, wait_for
from tests.support.workloads import SENTINEL_GROUP, TEMP_C, sentinel_event, temperature_events, temps_subscription

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("n_events", "kills", "rate", "hold_acks"),
    [
        pytest.param(5_000, 1, 800.0, "never", id="once"),
        # Killed while the acknowledgements of committed events are still on their way: their redelivery must
        # be recognised (exactly once), and the test proves the path ran (redeliveries skipped > 0).
        pytest.param(5_000, 1, 800.0, "always", id="acks-in-flight"),
        # None: a stream that lasts until after the last restart, so that every kill hits it mid-stream.
        pytest.param(None, 5, 400.0, "alternate", id="five-times"),
        pytest.param(10_000, 5, 400.0, "alternate", id="five-times-10k", marks=pytest.mark.slow),
    ],
)
async def test_agent_sigkill_mid_stream(
    fresh_broker: Any,
    docker_client: Any,
    handler_images: dict[str, str],
    rig: Rig,
    tmp_path: Path,
    outages: Outages,
    n_events: int | None,
    kills: int,
    rate: float,
    hold_acks: str,
) -> None:
    down = outages.pick(0, 10) if kills > 1 else 0.0
    async with LinkProxy(fresh_broker()) as proxy:
        await _kill_mid_stream(proxy, fresh_broker(), docker_client, rig.with_broker(proxy.broker), tmp_path,
                               n_events=n_events, kills=kills, rate=rate, hold_acks=hold_acks, down=down)


async def _kill_mid_stream(
    proxy: LinkProxy,
    cloud: Mosquitto,
    docker_client: Any,
    rig: Rig,
    tmp_path: Path,
    *,
    n_events: int | None,
    kills: int,
    rate: float,
    hold_acks: str,
    down: float,
) -> None:
    device, device_id, topic_prefix = rig.broker, rig.device_id, rig.prefix
    # An open-ended stream is cut short (PacedPublisher.finish) after the last restart; this only bounds it.
    cap = n_events or int(rate * kills * (down + 20))
    messages, celsius = temperature_events(topic_prefix, cap, seed=cap + kills)
    data_dir = tmp_path / "agent-data"
    outbox = data_dir / "outbox.sqlite"
    hub_db = tmp_path / "hub.db"
    status = f"127.0.0.1:{free_port()}"
    metrics_url = f"http://{status}/metrics"
    config = rig.agent_document(
        data_dir=data_dir,
        device_port=proxy.port,  # the agent reaches its broker through the proxy
        cloud_port=cloud.port,
        cloud_extra=QUICK_CLOUD,
        handlers=[TEMP_C],
        subscriptions=[temps_subscription(topic_prefix)],
        status={"listen": status},
    )

    def skipped() -> int:
        """Redeliveries the running agent recognised as already committed (acknowledged, not counted)."""
        return int(scrape(metrics_url, "edgefleet_agent_redeliveries_skipped_total", subscription="temps") or 0)

    def processed() -> int:
        return int(scrape(metrics_url, "edgefleet_agent_events_processed_total", subscription="temps") or 0)

    def sensor_rows() -> list[dict[str, Any]]:
        return [r for r in hub_rows(hub_db, device_id) if r["group"] != SENTINEL_GROUP]

    def one_handler_container() -> bool:
        found = labelled_containers(docker_client, device_id)
        return len(found) == 1 and found[0].status == "running"

    killed_at: list[int] = []
    redeliveries_skipped = 0
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
                    if kill == 0 or n_events is None:
                        assert not publisher.done.is_set(), f"events must still be flowing at kill {kill + 1}"
                    hold = hold_acks == "always" or (hold_acks == "alternate" and kill % 2 == 0)
                    if hold:
                        before = processed()
                        proxy.blackholed = True
                        await wait_for(lambda before=before: processed() >= before + 200, timeout=30,
                                       what="events processed and committed while their acks are held")
                    killed_at.append(publisher.acked)
                    redeliveries_skipped += skipped()
                    agent.kill()
                    await proxy.cut()
                    proxy.blackholed = False
                    assert integrity_check(outbox) == "ok"
                    await asyncio.sleep(down)  # the agent stays dead; events wait in the broker session
                    # kill -9 leaves the handler container behind; the next start must replace it, not add one.
                    await agent.start()
                    await wait_for(one_handler_container, timeout=15, what="one handler container after restart",
                                   detail=lambda: labelled_containers(docker_client, device_id))
                if n_events is None:
                    # The restarted agent takes the stream again before it ends.
                    started = time.time()
                    await wait_for(
                        lambda started=started: any(r["window_start"] >= started for r in sensor_rows()),
                        timeout=30, what="windows stored after the last restart", detail=agent.tail,
                    )
                    celsius = celsius[: await asyncio.to_thread(publisher.finish)]
                else:
                    await wait_for(publisher.done.is_set, timeout=60, what="every event acknowledged by the broker")
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
            redeliveries_skipped += skipped()
            duplicates = totals.events - len(celsius)
            print(  # the figures for the report (pytest -s, or the captured output of a failure)
                f"\nagent kill -9 x{kills}: published={len(celsius)} stored={totals.events} duplicates={duplicates} "
                f"windows={totals.rows} killed after {killed_at} events published; redeliveries skipped as already "
                f"committed={redeliveries_skipped}; dead letters={len(letters.records)}"
            )
            assert_events_per_group(sensor_rows(), messages[: len(celsius)], celsius, at_least=True)  # none lost
            assert outbox_losses(outbox) == {}, "the agent dropped records although its outbox had room"
            assert totals.events >= len(celsius), f"{len(celsius) - totals.events} events lost"
            assert totals.count == totals.events
            assert not letters.records, [(d.reason, d.detail) for d in letters.records[:5]]

        # A clean stop removes the handler container: nothing labelled with the device id is left.
        assert await asyncio.to_thread(agent.stop) == 0, agent.tail()
        await wait_for(lambda: not labelled_containers(docker_client, device_id), timeout=15,
                       what="no container left after the agent stopped")

    # Exactly once: redeliveries of events already committed are recognised by their packet id and digest.
    assert totals.events == len(celsius), f"{duplicates} events counted twice"
    if hold_acks != "never":
        assert redeliveries_skipped > 0, "no redelivery of a committed event: the fault did not hit its window"
    assert math.isclose(totals.sum, math.fsum(celsius), rel_tol=1e-9, abs_tol=1e-6)
    assert totals.min == min(celsius)
    assert totals.max == max(celsius)
