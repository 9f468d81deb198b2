"""The agent's device-broker session on a real mosquitto: confirmed publishes and manual acknowledgement."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge_agent.broker import LocalBroker
from scripts.mosquitto import Mosquitto

pytestmark = pytest.mark.integration


async def test_many_confirmed_publishes_race_their_pubacks_without_deadlock(
    device_broker: Mosquitto, topic_prefix: str
) -> None:
    # A PUBACK can arrive while publish() is still registering its future (paho calls on_publish under the
    # lock that publish takes): 20,000 confirmed publishes must all resolve, and the loop must stay live.
    local = LocalBroker(host=device_broker.host, port=device_broker.port, client_id=f"{topic_prefix}-pub",
                        subscriptions=[])
    async with local:
        async with asyncio.timeout(10):
            await local.wait_connected()
        async with asyncio.timeout(60):
            waits = []
            for i in range(20_000):
                pending = local.publish(f"{topic_prefix}/dl", b"%d" % i, qos=1)
                assert pending is not None
                waits.append(pending)
                if i % 500 == 0:
                    await asyncio.sleep(0)  # let confirmations interleave with new publishes
            await asyncio.gather(*waits)
        assert not local._publisher._confirms  # every registered confirmation was resolved and removed


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_unacknowledged_events_come_back_after_reconnection(
    device_broker: Mosquitto, topic_prefix: str, protocol: str
) -> None:
    # The persistent session and manual acknowledgement are what at-least-once intake stands on, in both
    # protocol versions: what we did not acknowledge, the broker delivers again to the next connection.
    topic = f"{topic_prefix}/ev"

    def intake() -> LocalBroker:
        return LocalBroker(host=device_broker.host, port=device_broker.port, client_id=f"{topic_prefix}-{protocol}",
                           subscriptions=[(topic, 1)], protocol=protocol)

    async def take(local: LocalBroker, n: int) -> list[Any]:
        got: list[Any] = []
        async with asyncio.timeout(30):
            async for batch in local.batches():
                got.extend(batch)
                if len(got) >= n:
                    return got
        return got

    publisher = LocalBroker(host=device_broker.host, port=device_broker.port, client_id=f"{topic_prefix}-p",
                            subscriptions=[])
    async with intake() as local:  # subscribe once so that the session exists
        async with asyncio.timeout(10):
            await local.wait_connected()
    async with publisher:
        async with asyncio.timeout(10):
            await publisher.wait_connected()
        await asyncio.gather(*[p for i in range(200) if (p := publisher.publish(topic, b"%d" % i, qos=1))])
    async with intake() as local:
        first = await take(local, 200)
        assert sorted(int(m.payload) for m in first) == list(range(200))
        for m in first[:150]:
            local.ack(m.mid)
    async with intake() as local:
        again = await take(local, 50)
        assert sorted(int(m.payload) for m in again) == sorted(int(m.payload) for m in first[150:])
        assert all(m.dup for m in again)
        for m in again:
            local.ack(m.mid)
