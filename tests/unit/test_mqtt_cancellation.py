"""A cancellation that lands in the same loop turn as the broker's PUBACK must still cancel the publisher.

On Python 3.11, ``asyncio.wait_for`` (which aiomqtt uses for its call timeouts) returns the result instead of
raising in that case (cpython#86296); a TaskGroup that cancelled such a task then waits for it forever, which
hung an agent's shutdown in CI. The stand-in client below waits the way aiomqtt 2.x does.
"""

from __future__ import annotations

import asyncio
import math
import sys
from typing import Any

import pytest

from edge_agent.broker.cloud import CloudBroker
from hub.config import BrokerConfig
from hub.mqtt.broker import Broker


class PubackClient:
    """Publishes wait on ``puback``, through ``asyncio.wait_for`` as aiomqtt's ``_wait_for`` does."""

    def __init__(self) -> None:
        self.puback: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting = asyncio.Event()

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout: float) -> None:
        self.waiting.set()
        await asyncio.wait_for(self.puback, None if timeout == math.inf else timeout)


async def _cancel_as_the_puback_arrives(publishing: asyncio.Task[None], client: PubackClient) -> None:
    await client.waiting.wait()
    client.puback.set_result(None)  # same loop turn: the reply and the cancellation race
    publishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publishing


async def test_the_agents_cloud_publish_is_cancelled_when_the_puback_arrives_at_the_same_time() -> None:
    broker = CloudBroker(host="127.0.0.1", port=1, client_id="t")
    client = PubackClient()
    broker._client = client  # type: ignore[assignment]
    await _cancel_as_the_puback_arrives(asyncio.create_task(broker.publish("t", b"x")), client)


async def test_the_hubs_publish_is_cancelled_when_the_puback_arrives_at_the_same_time() -> None:
    broker = Broker(BrokerConfig(host="127.0.0.1", port=1, client_id="t"))
    client = PubackClient()
    broker._client = client  # type: ignore[assignment]
    broker._connected.set()
    await _cancel_as_the_puback_arrives(asyncio.create_task(broker.publish("t", b"x")), client)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was rewritten on asyncio.timeout in 3.12")
async def test_the_stand_in_reproduces_the_lost_cancellation_with_a_wait_for_timeout() -> None:
    """The check above could not fail if the stand-in did not lose the cancellation with a timeout set."""
    client = PubackClient()

    async def publish_with_timeout() -> Any:
        await client.publish("t", b"x", qos=1, retain=False, timeout=10)
        return "returned"

    task = asyncio.create_task(publish_with_timeout())
    await client.waiting.wait()
    client.puback.set_result(None)
    task.cancel()
    assert await task == "returned"
