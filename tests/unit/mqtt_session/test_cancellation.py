"""A cancellation that lands in the same loop turn as the broker's reply must still cancel the caller.

On Python 3.11, ``asyncio.wait_for`` (which aiomqtt uses for its call timeouts) returns the result instead of
raising in that case (cpython#86296); a TaskGroup that cancelled such a task then waits for it forever, which
hung an agent's shutdown in CI. The stand-in client below waits the way aiomqtt 2.x does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from typing import Any

import pytest

from mqtt_session import Session
from mqtt_session.cancellation import raise_lost_cancellation
from mqtt_session.session import _Link


class ReplyClient:
    """Publishes and subscribes wait on ``reply``, through ``asyncio.wait_for`` as aiomqtt's ``_wait_for`` does."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting = asyncio.Event()
        self._disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # as aiomqtt's

    async def _wait(self, timeout: float) -> Any:
        self.waiting.set()
        return await asyncio.wait_for(self.reply, None if timeout == math.inf else timeout)

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout: float) -> None:
        await self._wait(timeout)

    async def subscribe(self, topics: list[tuple[str, int]], *, timeout: float) -> Any:
        return await self._wait(timeout)


def connected_session(client: ReplyClient) -> Session:
    session = Session("127.0.0.1", 1, client_id="t")
    session._link = _Link(client)  # type: ignore[arg-type]
    session._connected.set()
    return session


async def _cancel_as_the_reply_arrives(calling: asyncio.Task[None], client: ReplyClient, reply: Any) -> None:
    await client.waiting.wait()
    client.reply.set_result(reply)  # same loop turn: the reply and the cancellation race
    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling


async def test_a_publish_is_cancelled_when_the_puback_arrives_at_the_same_time() -> None:
    client = ReplyClient()
    session = connected_session(client)
    await _cancel_as_the_reply_arrives(asyncio.create_task(session.publish("t", b"x")), client, None)


async def test_a_subscribe_is_cancelled_when_the_suback_arrives_at_the_same_time() -> None:
    client = ReplyClient()
    session = connected_session(client)
    await _cancel_as_the_reply_arrives(asyncio.create_task(session.subscribe("t")), client, (1,))


async def test_a_swallowed_cancellation_is_raised_again() -> None:
    swallowed = asyncio.Event()

    async def connect_like_aiomqtt() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # what wait_for does when the reply won the race
            await asyncio.sleep(3600)
        swallowed.set()
        raise_lost_cancellation()

    task = asyncio.create_task(connect_like_aiomqtt())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert swallowed.is_set()


async def test_nothing_is_raised_without_a_cancellation() -> None:
    raise_lost_cancellation()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was rewritten on asyncio.timeout in 3.12")
async def test_the_stand_in_reproduces_the_lost_cancellation_with_a_wait_for_timeout() -> None:
    """The checks above could not fail if the stand-in did not lose the cancellation with a timeout set."""
    client = ReplyClient()

    async def publish_with_timeout() -> Any:
        await client.publish("t", b"x", qos=1, retain=False, timeout=10)
        return "returned"

    task = asyncio.create_task(publish_with_timeout())
    await client.waiting.wait()
    client.reply.set_result(None)
    task.cancel()
    assert await task == "returned"
