"""The uplink's send loop after a failed publish: no spin on a connection still counted up, and straight on with
the next connection once it is lost (its connect hook resends everything unacknowledged)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from edge_agent.uplink import Uplink
from edge_protocol.aggregate import WindowResult
from edge_protocol.topics import Topics
from mqtt_session import FakeSession
from tests.support.running import cancel_and_wait, wait_for

TOPICS = Topics("fleet")


class CountingSession(FakeSession):
    """Counts every publish attempt, the failed ones too."""

    attempts: int = 0

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.attempts += 1
        await super().publish(topic, payload, qos=qos, retain=retain)


def result(n: int) -> WindowResult:
    return WindowResult(id=f"d1/temp@r//{n}.000/0", subscription="temp", revision="r", window_start=float(n),
                        window_end=float(n) + 10, events=n)  # fmt: skip


@contextlib.asynccontextmanager
async def running_uplink(tmp_path: Path, cloud: FakeSession) -> AsyncIterator[tuple[Uplink, Outbox]]:
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        await outbox.commit([result(1), result(2)], {})
        uplink = Uplink(cloud=cloud, outbox=outbox, device_id="d1", topics=TOPICS, retry_pause=0.5)
        task = asyncio.create_task(uplink.run())
        try:
            yield uplink, outbox
        finally:
            await cancel_and_wait(task, what="the uplink")


def batches(cloud: FakeSession) -> int:
    return sum(1 for p in cloud.published if p.topic == TOPICS.aggregates("d1"))


async def test_a_publish_failing_at_once_on_a_connection_still_up_is_not_retried_in_a_tight_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cloud = CountingSession()
    async with running_uplink(tmp_path, cloud) as (_uplink, outbox):
        await wait_for(lambda: batches(cloud) == 1, timeout=5, what="the first batch")
        cloud.fail_publish = True  # fails without yielding, the session still connected
        before = cloud.attempts
        with caplog.at_level(logging.WARNING, logger="edge_agent.uplink"):
            await outbox.commit([result(3)], {})
            await asyncio.sleep(1.2)
        tries = cloud.attempts - before
        warnings = [r for r in caplog.records if "aggregates not sent" in r.getMessage()]
        assert tries <= 5, f"{tries} publish attempts in 1.2 s"
        assert 1 <= len(warnings) <= 4, len(warnings)
        cloud.fail_publish = False
        await wait_for(lambda: batches(cloud) == 2, timeout=5, what="the batch sent once publishes work again")


async def test_after_a_lost_connection_it_waits_for_the_next_one_and_sends_there_at_once(tmp_path: Path) -> None:
    cloud = CountingSession()
    async with running_uplink(tmp_path, cloud) as (uplink, _outbox):
        await wait_for(lambda: batches(cloud) == 1, timeout=5, what="the first batch")
        cloud.drop()
        before = cloud.attempts
        await asyncio.sleep(0.3)
        assert cloud.attempts == before  # nothing tried while disconnected
        await cloud.reconnect()
        # The hook's status and the resent batch, without the pause a failure on a live connection gets.
        await wait_for(lambda: batches(cloud) == 2, timeout=0.3, what="the resend on the new connection")
        assert uplink.connected
