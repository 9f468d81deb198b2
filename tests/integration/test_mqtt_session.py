"""mqtt_session.Session on a real mosquitto: delivery, reconnection after a restart with its subscriptions and
connect hooks, and a shutdown that does not hang on a call the broker never answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

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


async def test_calls_waiting_when_the_connection_is_lost_fail_at_once_not_at_the_call_timeout(
    broker: Mosquitto,
) -> None:
    """The broker freezes (no PUBACK, no SUBACK can come), then dies: the kernel resets the connection. The
    publish and the subscribe waiting on it fail as the loss is read, not after ``call_timeout`` (which the
    storm test's catch-up used to wait out), and the session no longer counts itself connected when they do."""
    session = Session(broker.host, broker.port, client_id="s6", backoff=Backoff(0.05, 0.5), call_timeout=20.0)
    failed: dict[str, tuple[float, bool, SessionError]] = {}

    async def call(name: str, make: Callable[[], Awaitable[None]]) -> None:
        try:
            await make()
        except SessionError as exc:
            failed[name] = (time.monotonic(), session.connected, exc)

    async with session, asyncio.TaskGroup() as tg:
        await asyncio.wait_for(session.wait_connected(), 10)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        tg.create_task(call("publish", lambda: session.publish("t", b"x", qos=1)))
        tg.create_task(call("subscribe", lambda: session.subscribe("t/#", qos=1)))
        await asyncio.sleep(0.5)  # both sent, waiting for a reply
        assert not failed
        killed_at = time.monotonic()
        await asyncio.to_thread(broker.kill)  # SIGKILL works on a stopped process
        await wait_for(lambda: len(failed) == 2, timeout=10, what="both calls failing", detail=lambda: failed)
        for name, (at, connected, exc) in failed.items():
            assert at - killed_at < 2.0, f"{name} failed {at - killed_at:.1f}s after the broker died: {exc}"
            assert not connected, f"{name} failed while the session still counted itself connected"
            assert "connection lost" in exc.reason, exc

        await asyncio.to_thread(broker.start)  # same port: the session reconnects and works again
        await asyncio.wait_for(session.wait_connected(), 15)
        await session.publish("t", b"y", qos=1)


async def test_a_publish_fails_when_the_keepalive_finds_the_connection_dead_and_its_puback_cannot_complete_it(
    broker: Mosquitto,
) -> None:
    """A frozen broker: the session's keepalive finds the connection dead (no PINGRESP), the pending publish
    fails within a second of that rather than at ``call_timeout``; the broker then wakes up and may answer the
    old connection's PUBLISH, which completes nothing: the session is on a new connection and publishes there."""
    session = Session(
        broker.host, broker.port, client_id="s7", keepalive=1, backoff=Backoff(0.05, 0.5), call_timeout=20.0
    )
    losses: list[float] = []
    session.add_disconnect_hook(lambda _reason: losses.append(time.monotonic()))
    async with session:
        await asyncio.wait_for(session.wait_connected(), 10)
        with frozen(broker):
            started = time.monotonic()
            with pytest.raises(SessionError, match="connection lost") as failure:
                await session.publish("t", b"x", qos=1)
            failed_at = time.monotonic()
            assert not session.connected
            assert failed_at - started < 10, f"failed after {failed_at - started:.1f}s: {failure.value}"
            await wait_for(lambda: bool(losses), timeout=5, what="the disconnect hook")
            assert abs(losses[0] - failed_at) < 1.0, (losses[0] - started, failed_at - started)
        await asyncio.wait_for(session.wait_connected(), 15)
        await session.publish("t", b"y", qos=1)
    assert session.connects == 2
