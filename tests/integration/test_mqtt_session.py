"""mqtt_session.Session on a real mosquitto: delivery, reconnection after a restart with its subscriptions and
connect hooks, and a shutdown that does not hang on a call the broker never answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from mqtt_session import Backoff, Message, Session, SessionError
from scripts.mosquitto import Mosquitto
from tests.support.running import cancel_and_wait, wait_for

pytestmark = pytest.mark.integration


def quick_session(broker: Mosquitto, client_id: str) -> Session:
    return Session(broker.host, broker.port, client_id=client_id, backoff=Backoff(0.05, 0.5), call_timeout=5.0)


class Inbox:
    """Collects ``session.messages()`` in a task of its own."""

    def __init__(self, session: Session) -> None:
        self.received: list[Message] = []
        self._task = asyncio.create_task(self._read(session))

    async def _read(self, session: Session) -> None:
        async for message in session.messages():
            self.received.append(message)

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.received if m.topic == topic]

    async def close(self) -> None:
        await cancel_and_wait(self._task, what="the inbox")


@contextlib.asynccontextmanager
async def inbox(session: Session) -> AsyncIterator[Inbox]:
    box = Inbox(session)
    try:
        yield box
    finally:
        await box.close()


@pytest.fixture
def broker(fresh_broker: Callable[..., Mosquitto]) -> Mosquitto:
    return fresh_broker()


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    """The broker stops answering (SIGSTOP) with its connections open, as a hung host would."""
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.pid, signal.SIGCONT)


async def test_messages_delivers_what_is_published_to_a_subscribed_filter(broker: Mosquitto, topic_prefix: str) -> None:
    async with quick_session(broker, "s1") as session, inbox(session) as box:
        await session.subscribe(f"{topic_prefix}/+/in", qos=1)
        await asyncio.wait_for(session.wait_connected(), 10)
        await session.publish(f"{topic_prefix}/a/in", b"one", qos=1)
        await session.publish(f"{topic_prefix}/a/out", b"not subscribed", qos=1)
        await session.publish(f"{topic_prefix}/b/in", b"two", qos=0, retain=True)
        await wait_for(lambda: len(box.received) == 2, timeout=10, what="two messages", detail=lambda: box.received)
    first, second = box.received
    assert (first.topic, first.payload, first.qos) == (f"{topic_prefix}/a/in", b"one", 1)
    assert (second.topic, second.payload) == (f"{topic_prefix}/b/in", b"two")


async def test_after_a_broker_restart_it_reconnects_subscribes_again_and_calls_the_hooks(
    broker: Mosquitto, topic_prefix: str
) -> None:
    topic, hello = f"{topic_prefix}/in", f"{topic_prefix}/hello"
    session = quick_session(broker, "s2")
    hook_calls: list[int] = []
    losses: list[str] = []

    async def announce() -> None:
        hook_calls.append(session.connects)
        await session.publish(hello, str(session.connects).encode())

    session.add_connect_hook(announce)
    session.add_disconnect_hook(losses.append)
    await session.subscribe(topic)
    await session.subscribe(hello)
    async with session, inbox(session) as box:
        await asyncio.wait_for(session.wait_connected(), 10)
        await session.publish(topic, b"before")
        await wait_for(lambda: box.payloads(topic) == [b"before"], timeout=10, what="the first message")

        await asyncio.to_thread(broker.restart)  # a clean start: the broker forgot the subscriptions
        await wait_for(lambda: session.connects == 2 and session.connected, timeout=15, what="a reconnection")
        await session.publish(topic, b"after")
        await wait_for(lambda: box.payloads(topic) == [b"before", b"after"], timeout=10, what="the second message")
    assert hook_calls == [1, 2]
    assert box.payloads(hello) == [b"1", b"2"]  # each hook published after the subscriptions were active
    assert losses
    assert session.last_error == losses[-1]


async def test_publish_without_a_connection_fails_at_once(broker: Mosquitto) -> None:
    session = quick_session(broker, "s3")
    with pytest.raises(SessionError, match="not connected"):
        await session.publish("t", b"x")
    broker.stop()
    async with session:
        await wait_for(lambda: session.last_error is not None, timeout=10, what="a failed attempt")
        with pytest.raises(SessionError, match="not connected"):
            await session.publish("t", b"x")


async def test_a_call_the_broker_never_answers_times_out(broker: Mosquitto) -> None:
    session = Session(broker.host, broker.port, client_id="s4", backoff=Backoff(0.05, 0.5), call_timeout=0.5)
    async with session:
        await asyncio.wait_for(session.wait_connected(), 10)
        with frozen(broker), pytest.raises(SessionError, match=r"no PUBACK within 0\.5s"):
            await session.publish("t", b"x", qos=1)


async def test_cancelling_a_call_the_broker_never_answers_does_not_hang_the_shutdown(broker: Mosquitto) -> None:
    session = quick_session(broker, "s5")
    go = asyncio.Event()
    started = 0

    async def publish() -> None:
        nonlocal started
        await go.wait()
        started += 1
        await session.publish("t", b"x", qos=1)

    async def run() -> None:
        async with session, asyncio.TaskGroup() as tg:
            tg.create_task(publish())
            await asyncio.Future()

    task = asyncio.create_task(run())
    try:
        await wait_for(lambda: session.connected, timeout=10, what="the connection")
        with frozen(broker):
            go.set()  # a publish to a frozen broker waits on a PUBACK that cannot come
            await wait_for(lambda: started > 0, timeout=5, what="the publish")
            await cancel_and_wait(task, timeout=5, what="the session and its publisher")
    finally:
        task.cancel()
