"""The agent's device-broker session on a real mosquitto: confirmed publishes and manual acknowledgement."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge_agent.broker import LocalBroker
from scripts.mosquitto import Mosquitto

pytestmark = pytest.mark.integration


def _client(broker: Mosquitto, client_id: str, subscriptions: list[tuple[str, int]], protocol: str) -> LocalBroker:
    return LocalBroker(
        host=broker.host, port=broker.port, client_id=client_id, subscriptions=subscriptions, protocol=protocol
    )


async def test_many_confirmed_publishes_race_their_pubacks_without_deadlock(
    device_broker: Mosquitto, topic_prefix: str
) -> None:
    # A PUBACK can arrive while publish() is still registering its future (paho calls on_publish under the
    # lock that publish takes): 20,000 confirmed publishes must all resolve, and the loop must stay live.
    local = _client(device_broker, f"{topic_prefix}-pub", [], "3.1.1")
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
        return _client(device_broker, f"{topic_prefix}-{protocol}", [(topic, 1)], protocol)

    async def take(local: LocalBroker, n: int) -> list[Any]:
        got: list[Any] = []
        async with asyncio.timeout(30):
            async for batch in local.batches():
                got.extend(batch)
                if len(got) >= n:
                    return got
        return got

    publisher = _client(device_broker, f"{topic_prefix}-p", [], protocol)
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


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_acknowledgements_before_close_reach_the_broker_before_a_reconnection(
    device_broker: Mosquitto, topic_prefix: str, protocol: str
) -> None:
    # mosquitto reads a connection's packets one at a time: when the agent restarts at once with the same client
    # id, the new connection took the session over while the old one's acknowledgements were still unread, and the
    # broker redelivered what had been acknowledged. aclose now waits until the broker has read our DISCONNECT.
    topic = f"{topic_prefix}/ev"
    count = 3000

    def intake() -> LocalBroker:
        return _client(device_broker, f"{topic_prefix}-{protocol}", [(topic, 1)], protocol)

    publisher = _client(device_broker, f"{topic_prefix}-p", [], protocol)
    async with intake() as local:
        async with asyncio.timeout(10):
            await local.wait_connected()
    async with publisher:
        async with asyncio.timeout(10):
            await publisher.wait_connected()
        await asyncio.gather(*[p for i in range(count) if (p := publisher.publish(topic, b"%d" % i, qos=1))])
        async with intake() as local:
            got = 0
            async with asyncio.timeout(30):
                async for batch in local.batches():
                    for m in batch:
                        local.ack(m.mid)
                    got += len(batch)
                    if got >= count:
                        break
        async with intake() as local:
            async with asyncio.timeout(10):
                await local.wait_connected()
            # A marker published after the reconnection arrives after anything the broker redelivers.
            marker = publisher.publish(topic, b"-1", qos=1)
            assert marker is not None
            await marker
            redelivered: list[int] = []
            async with asyncio.timeout(30):
                async for batch in local.batches():
                    for m in batch:
                        local.ack(m.mid)
                    redelivered += [int(m.payload) for m in batch]
                    if redelivered[-1] == -1:
                        break
    assert redelivered == [-1]
