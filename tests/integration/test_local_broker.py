"""The agent's device-broker session on a real mosquitto: confirmed publishes and manual acknowledgement."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.broker import LocalBroker
from tests.support.brokers import Mosquitto

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
        assert not local._confirms  # every registered confirmation was resolved and removed
