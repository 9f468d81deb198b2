"""Calls waiting on a connection fail as soon as it is lost, not at their timeout (mqtt_session.cancellation.Calls
and the session's use of it, with a stand-in client that waits the way aiomqtt 2.x does); a cancelled caller still
gets its CancelledError. On a real broker: tests/integration/test_mqtt_session.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from mqtt_session import SessionError
from mqtt_session.cancellation import Calls, CutShort
from tests.unit.mqtt_session.test_cancellation import ReplyClient, connected_session


async def test_a_cut_ends_every_waiting_call_at_once_and_fails_later_ones() -> None:
    calls = Calls()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = [asyncio.create_task(calls.bounded(lambda: asyncio.shield(never), 30)) for _ in range(3)]
    await asyncio.sleep(0.01)
    started = time.monotonic()
    calls.cut("connection lost")
    for task in waiting:
        with pytest.raises(CutShort, match="connection lost"):
            await task
    assert time.monotonic() - started < 1
    with pytest.raises(CutShort):
        await calls.bounded(lambda: asyncio.sleep(0), 30)
    calls.cut("another reason")
    assert calls.reason == "connection lost"


async def test_a_call_still_times_out_and_one_that_completes_is_not_cut() -> None:
    calls = Calls()
    with pytest.raises(TimeoutError):
        await calls.bounded(lambda: asyncio.sleep(10), 0.05)
    assert await calls.bounded(lambda: asyncio.sleep(0, "done"), 1) == "done"
    calls.cut("connection lost")  # nothing waiting: nothing to cancel


async def test_a_caller_cancelled_in_the_turn_of_the_cut_is_cancelled_not_failed() -> None:
    calls = Calls()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(calls.bounded(lambda: asyncio.shield(never), 30))
    await asyncio.sleep(0.01)
    calls.cut("connection lost")
    task.cancel()  # a shutdown cancelling the caller in the same turn: it must stop, not go on with an error
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_lost_connection_fails_the_session_s_publish_at_once_and_it_is_no_longer_connected() -> None:
    client = ReplyClient()
    session = connected_session(client)
    session._timeout = 30
    publishing = asyncio.create_task(session.publish("t", b"x"))
    await client.waiting.wait()
    assert session.connected
    started = time.monotonic()
    client._disconnected.set_exception(ConnectionResetError("gone"))  # aiomqtt's view of paho's on_disconnect
    assert not session.connected  # known at once, before any task has run
    with pytest.raises(SessionError, match="connection lost"):
        await publishing
    assert time.monotonic() - started < 1
    assert client.reply.cancelled()  # the call's wait for its PUBACK is over: nothing can complete it later
    with pytest.raises(SessionError, match="not connected"):
        await session.publish("t", b"y")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await session.wait_connected()  # no spin: it waits for the next connection
    assert isinstance(client._disconnected.exception(), ConnectionResetError)


async def test_a_cancelled_publish_on_a_lost_connection_is_cancelled() -> None:
    client = ReplyClient()
    session = connected_session(client)
    publishing = asyncio.create_task(session.publish("t", b"x"))
    await client.waiting.wait()
    session._lose(session._link, "connection lost")  # type: ignore[arg-type]
    publishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publishing
