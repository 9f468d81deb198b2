"""The resilient session over aiomqtt: the only module here that imports an MQTT library.

:class:`Session` keeps one connection alive in a task (reconnecting with :class:`Backoff`), subscribes every
recorded filter again on each connection, awaits the connect hooks, and feeds one message queue that
survives reconnects. ``async with Session(...)`` runs that task for the block; ``await session.run()``
runs it in the caller's task.

Bounded receive (``receive_maximum=N``, MQTT 5): paho acknowledges nothing by itself; a message is acknowledged
when the reader of ``messages()`` takes it, and the CONNECT's Receive Maximum tells the broker to send no more
than N unacknowledged QoS 1/2 messages. A reader that falls behind so stops the broker's sending at N queued
messages instead of the whole backlog being read into memory: the broker keeps the rest.

mosquitto 2.0 honours the Receive Maximum only up to the first acknowledgement: each PUBACK of the oldest message
in flight refills up to N more from the client's queue (eclipse-mosquitto/mosquitto#2301), so with in-order
acknowledgements only N = 1 stays a bound there. aiomqtt
(2.5) has no manual acknowledgement of its own: :func:`_paho` reaches into it for paho's, and :func:`_inbox_type`
has aiomqtt hand each message to the session's queue as it arrives.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_session.backoff import Backoff
from mqtt_session.cancellation import UNBOUNDED, Calls, CutShort, raise_lost_cancellation
from mqtt_session.interface import ConnectHook, DisconnectHook, Message, SessionError, Will

log = logging.getLogger(__name__)

_SUBACK_FAILURE = 0x80  # MQTT 3.1.1 grants a QoS or refuses with this
_MAX_RECEIVE_MAXIMUM = 65_535  # the property is a two-byte integer, 0 not allowed


@dataclass(slots=True)
class _Link:
    """One connection: its queued messages are acknowledged on it while it is open, and never on another; the
    calls made on it (``calls``) are cut as soon as it is known lost."""

    client: aiomqtt.Client | None = None
    calls: Calls = field(default_factory=Calls)

    @property
    def open(self) -> bool:
        """Not known lost: neither cut nor disconnected in aiomqtt (which the session hears of a turn later)."""
        return self.calls.reason is None and (self.client is None or not _disconnected(self.client).done())


@dataclass(frozen=True, slots=True)
class _Received:
    """A queued message and what acknowledges it: the connection it came on and its packet id."""

    message: Message
    link: _Link
    mid: int


class Session:
    """One MQTT connection that stays up: ``async with Session("broker", 1883, client_id="x") as s: ...``.

    ``will`` may be a function, called before each connection attempt (a will that carries a timestamp).
    ``clean_start`` and ``session_expiry`` (seconds; None: the session ends with the connection) say what
    the broker keeps for this client between connections. ``call_timeout`` bounds connecting, each
    SUBACK and each PUBACK.

    ``receive_maximum`` (MQTT 5 only; None: unbounded, every message acknowledged on arrival) bounds what the
    queue of ``messages()`` holds: the broker sends at most that many unacknowledged QoS 1/2 messages, and
    each is acknowledged when the reader takes it, so a slow reader leaves the rest at the broker (on
    mosquitto 2.0 only with ``receive_maximum=1``: see the module's notes). Messages a lost connection left in
    the queue stay there for the reader (no longer acknowledged: the broker sends them again to a persistent
    session, a clean start's sender resends); a new connection waits until fewer than ``receive_maximum`` are
    left, so the queue never holds ``2 x receive_maximum``. QoS 0 messages, which the broker sends without
    counting them, are queued too: the bound is for QoS 1 and 2. A bounded session needs a reader."""

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive: int = 60,
        will: Will | Callable[[], Will] | None = None,
        clean_start: bool = True,
        session_expiry: int | None = None,
        protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V5,
        backoff: Backoff | None = None,
        call_timeout: float = 10.0,
        receive_maximum: int | None = None,
    ) -> None:
        if receive_maximum is not None:
            if protocol is not aiomqtt.ProtocolVersion.V5:
                raise ValueError("receive_maximum needs MQTT 5")
            if not 1 <= receive_maximum <= _MAX_RECEIVE_MAXIMUM:
                raise ValueError(f"receive_maximum must be in 1..{_MAX_RECEIVE_MAXIMUM}, not {receive_maximum}")
        self.host, self.port, self.client_id = host, port, client_id
        self._options: dict[str, Any] = {
            "identifier": client_id,
            "username": username,
            "password": password,
            "keepalive": keepalive,
            "protocol": protocol,
            "timeout": call_timeout,  # aiomqtt's own timeout now bounds only connecting and disconnecting
            "tls_context": tls,
        }
        if protocol is aiomqtt.ProtocolVersion.V5:
            self._options["clean_start"] = clean_start
            if session_expiry is not None or receive_maximum is not None:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                if session_expiry is not None:
                    properties.SessionExpiryInterval = session_expiry
                if receive_maximum is not None:
                    properties.ReceiveMaximum = receive_maximum
                self._options["properties"] = properties
        else:
            self._options["clean_session"] = clean_start
        self._will = will
        self._backoff = backoff or Backoff()
        self._timeout = call_timeout
        self._filters: dict[str, int] = {}
        self._connect_hooks: list[ConnectHook] = []
        self._disconnect_hooks: list[DisconnectHook] = []
        self.receive_maximum = receive_maximum
        self._queue: asyncio.Queue[_Received] = asyncio.Queue()
        self._taken = asyncio.Event()  # set whenever the reader takes a message: room for a new connection
        self._link: _Link | None = None  # set while a connection is up (hooks may publish)
        self._connected = asyncio.Event()  # set once subscriptions are active and the hooks are done
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self.connects = 0
        """Connections that reached CONNACK."""
        self.last_error: str | None = None
        """Why the last attempt failed or the last connection ended (None before the first)."""
        self.high_water = 0
        """The most messages the queue of ``messages()`` has held at once."""

    def __repr__(self) -> str:
        return f"Session(mqtt://{self.host}:{self.port} as {self.client_id}, connected={self.connected})"

    # -- the interface ---------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """False as soon as the connection is known lost, not only once the connection task has noticed."""
        return self._connected.is_set() and self._live_link() is not None

    async def wait_connected(self) -> None:
        while self._live_link() is None or not self._connected.is_set():
            await self._connected.wait()

    def add_connect_hook(self, hook: ConnectHook) -> None:
        """``hook`` runs after every future connection, in the order added; a :class:`SessionError` it raises
        drops the connection (and the next one calls it again)."""
        self._connect_hooks.append(hook)

    def add_disconnect_hook(self, hook: DisconnectHook) -> None:
        self._disconnect_hooks.append(hook)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected (SessionError if refused or unanswered), and on every connection."""
        self._filters[topic_filter] = qos
        link = self._live_link()
        if link is not None and self._connected.is_set():
            await self._subscribe(link, {topic_filter: qos})

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish now; SessionError when not connected, on failure, without a PUBACK in time, or at once when
        the connection is lost before the PUBACK (the message may or may not have reached the broker)."""
        link = self._live_link()
        if link is None or link.client is None:
            raise SessionError("not connected to the broker", topic=topic)
        client = link.client
        try:
            await link.calls.bounded(
                lambda: client.publish(topic, payload, qos=qos, retain=retain, timeout=UNBOUNDED), self._timeout
            )
        except aiomqtt.MqttError as exc:
            raise SessionError(f"publish failed: {exc}", topic=topic) from exc
        except CutShort as exc:
            raise SessionError(f"publish failed: {exc.reason}", topic=topic) from None
        except TimeoutError:
            raise SessionError(f"publish failed: no PUBACK within {self._timeout:g}s", topic=topic) from None

    @property
    def pending(self) -> int:
        """Messages received and not yet taken by the reader of ``messages()``."""
        return self._queue.qsize()

    async def messages(self) -> AsyncGenerator[Message, None]:
        while True:
            received = await self._queue.get()
            self._taken.set()
            self._acknowledge(received)  # taken: the broker may send the next one while the reader works
            yield received.message

    # -- lifetime --------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tasks is not None:
            raise RuntimeError(f"{self!r} is already running")
        # The TaskGroup lives as long as the block: a crash of the connection task propagates to the task
        # that owns the session instead of leaving readers waiting on a queue nobody fills.
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._runner = self._tasks.create_task(self.run(), name=f"mqtt-session.{self.client_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            self._runner.cancel()
        if self._tasks is not None:
            await self._tasks.__aexit__(exc_type, exc, tb)

    async def run(self) -> None:
        """Connect, and connect again after each failure or loss, until cancelled."""
        while True:
            await self._room_for_a_connection()
            reason = await self._connection()
            raise_lost_cancellation()  # aiomqtt's connect and disconnect still go through wait_for
            self.last_error = reason
            for hook in self._disconnect_hooks:
                hook(reason)
            delay = self._backoff.next_delay()
            log.warning("mqtt://%s:%d as %s: %s; reconnecting in %.1fs", self.host, self.port, self.client_id,
                        reason, delay)  # fmt: skip
            await asyncio.sleep(delay)

    # -- one connection --------------------------------------------------------------------------------------

    def _new_client(self, link: _Link) -> aiomqtt.Client:
        will = self._will() if callable(self._will) else self._will
        options = dict(self._options, queue_type=_inbox_type(lambda message: self._receive(message, link)))
        if will is not None:
            options["will"] = aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client = link.client = aiomqtt.Client(self.host, self.port, **options)
        if self.receive_maximum is not None:
            _paho(client).manual_ack_set(True)
        return client

    def _receive(self, message: aiomqtt.Message, link: _Link) -> None:
        """Queue a message as paho decodes it (called by aiomqtt's ``on_message``, on the event loop)."""
        self._queue.put_nowait(_Received(_message(message), link, message.mid))
        self.high_water = max(self.high_water, self._queue.qsize())

    def _acknowledge(self, received: _Received) -> None:
        # Only on the connection it came on: a packet id means nothing on another one.
        link = received.link
        if self.receive_maximum is not None and received.message.qos > 0 and link.open and link.client is not None:
            _paho(link.client).ack(received.mid, received.message.qos)

    async def _room_for_a_connection(self) -> None:
        """With bounded receive, wait until the queue holds fewer than ``receive_maximum`` messages: a new
        connection's window comes on top of what lost ones left."""
        if self.receive_maximum is None:
            return
        while self._queue.qsize() >= self.receive_maximum:
            self._taken.clear()
            await self._taken.wait()

    def _live_link(self) -> _Link | None:
        """The current connection unless it is known lost (then it is marked lost here, at once)."""
        link = self._link
        if link is not None and not link.open:
            self._lose(link, "connection lost")
            return None
        return link

    def _lose(self, link: _Link, reason: str) -> None:
        """The connection is gone: no longer connected, and every call waiting on it fails now (SessionError)
        rather than at its timeout, so that callers resend on the next connection. Its calls are aiomqtt's
        and the connection's client is never used again: a reply meant for them cannot complete a later call."""
        if self._link is link:
            self._link = None
            self._connected.clear()
        link.calls.cut(reason)

    async def _connection(self) -> str:
        """One connection from CONNECT to its loss; returns why it ended."""
        link = _Link()
        try:
            async with self._new_client(link) as client:
                raise_lost_cancellation()
                self.connects += 1
                self._backoff.connected()
                # aiomqtt resolves this future when paho reports the loss: the calls on this connection end
                # then, whatever this task is awaiting (a connect hook, a SUBACK, the message iterator).
                _disconnected(client).add_done_callback(lambda done: self._lose(link, _loss(done)))
                self._link = link
                subscribed: set[str] = set()
                await self._subscribe_recorded(link, subscribed)
                for hook in self._connect_hooks:
                    await hook()
                # Filters recorded while the hooks ran; no await between the last check and set().
                await self._subscribe_recorded(link, subscribed)
                if not link.open:
                    raise SessionError("connection lost")
                self._connected.set()
                log.info("connected to mqtt://%s:%d as %s", self.host, self.port, self.client_id)
                # Messages go straight to our queue (_receive): aiomqtt's iterator only says when the
                # connection ends.
                async for _ in client.messages:
                    pass
            return "connection closed"
        except (aiomqtt.MqttError, SessionError) as exc:
            return str(exc)
        finally:
            self._lose(link, "connection closed")

    async def _subscribe_recorded(self, link: _Link, done: set[str]) -> None:
        # Loop until nothing is left: subscribe() may record a filter while we await a SUBACK.
        while pending := {f: q for f, q in self._filters.items() if f not in done}:
            await self._subscribe(link, pending)
            done.update(pending)

    async def _subscribe(self, link: _Link, filters: dict[str, int]) -> None:
        topic = ", ".join(filters)
        client = link.client
        if client is None:
            raise SessionError("not connected to the broker", topic=topic)
        try:
            granted = await link.calls.bounded(
                lambda: client.subscribe(list(filters.items()), timeout=UNBOUNDED), self._timeout
            )
        except aiomqtt.MqttError as exc:
            raise SessionError(f"subscribe failed: {exc}", topic=topic) from exc
        except CutShort as exc:
            raise SessionError(f"subscribe failed: {exc.reason}", topic=topic) from None
        except TimeoutError:
            raise SessionError(f"subscribe failed: no SUBACK within {self._timeout:g}s", topic=topic) from None
        for topic_filter, code in zip(filters, granted, strict=False):
            refused = code.is_failure if isinstance(code, ReasonCode) else code == _SUBACK_FAILURE
            if refused:
                raise SessionError(f"subscription refused: {code}", topic=topic_filter)


def _inbox_type(receive: Callable[[aiomqtt.Message], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's inbound queue class for one connection: it hands each message to ``receive`` as paho decodes
    it and keeps none (aiomqtt's iterator then only waits for the connection to end)."""

    class _Inbox(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            receive(item)

    return _Inbox


def _paho(client: aiomqtt.Client) -> mqtt.Client:
    """The paho client under aiomqtt's: aiomqtt 2.5 has no manual acknowledgement of its own."""
    return client._client


def _disconnected(client: aiomqtt.Client) -> asyncio.Future[None]:
    """aiomqtt's future of the connection's end (2.5 has no public one; its message iterator waits on it):
    resolved as paho reports the loss, in the loop turn that reads it."""
    return client._disconnected


def _loss(disconnected: asyncio.Future[None]) -> str:
    cause = None if disconnected.cancelled() else disconnected.exception()
    return f"connection lost ({cause})" if cause is not None else "connection lost"


def _message(message: aiomqtt.Message) -> Message:
    return Message(message.topic.value, _payload(message.payload), message.retain, message.qos)


def _payload(value: object) -> bytes:
    # aiomqtt types payloads loosely; from the network they are bytes.
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return b"" if value is None else str(value).encode()
