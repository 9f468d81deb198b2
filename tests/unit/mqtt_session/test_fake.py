"""The in-memory session behaves as the real one does for its users: hooks on each connection, failed
publishes while disconnected, injected messages in order."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from mqtt_session import FakeSession, Published, SessionError


async def test_the_connect_hooks_run_on_every_connection_and_may_publish() -> None:
    session = FakeSession(start_connected=False)
    calls: list[str] = []
    losses: list[str] = []

    async def announce() -> None:
        assert not session.connected  # wait_connected() returns after the hooks
        await session.publish("status", b"online", retain=True)
        calls.append("hook")

    session.add_connect_hook(announce)
    session.add_disconnect_hook(losses.append)
    with pytest.raises(SessionError, match="not connected"):
        await session.publish("t", b"x")
    await session.reconnect()
    assert session.connected
    session.drop("broker gone")
    assert not session.connected
    with pytest.raises(SessionError, match="not connected"):
        await session.publish("t", b"x")
    await session.reconnect()
    assert calls == ["hook", "hook"]
    assert losses == ["broker gone"]
    assert session.published == [Published("status", b"online", 1, True)] * 2


async def test_run_calls_the_hooks_of_a_session_connected_from_the_start() -> None:
    session = FakeSession()
    called = asyncio.Event()

    async def hook() -> None:
        called.set()

    session.add_connect_hook(hook)
    runner = asyncio.create_task(session.run())
    async with asyncio.timeout(5):
        await called.wait()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner


async def test_fail_publish_fails_while_connected() -> None:
    session = FakeSession(fail_publish=True)
    with pytest.raises(SessionError):
        await session.publish("t", b"x")
    assert session.published == []


async def test_injected_messages_arrive_in_order_and_filters_are_recorded() -> None:
    session = FakeSession()
    await session.subscribe("a/#", qos=0)
    session.inject("a/1", "one")
    session.inject("a/2", b"two", retain=True)
    async with contextlib.aclosing(session.messages()) as messages:
        first, second = await anext(messages), await anext(messages)
    assert (first.topic, first.payload, first.retain) == ("a/1", b"one", False)
    assert (second.topic, second.payload, second.retain) == ("a/2", b"two", True)
    assert session.filters == {"a/#": 0}
