"""The resilient session over aiomqtt: the only module here that imports an MQTT library.

:class:`Session` keeps one connection alive in a task (reconnecting with :class:`Backoff`), subscribes every
recorded filter again on each connection, awaits the connect hooks, and feeds one message queue that
survives reconnects. ``async with Session(...)`` runs that task for the block; ``await session.run()``
runs it in the caller's task.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_session.backoff import Backoff
from mqtt_session.cancellation import UNBOUNDED, bounded, raise_lost_cancellation
from mqtt_session.interface import ConnectHook, DisconnectHook, Message, SessionError, Will

log = logging.getLogger(__name__)

_SUBACK_FAILURE = 0x80  # MQTT 3.1.1 grants a QoS or refuses with this


class Session:
    """One MQTT connection that stays up: ``async with Session("broker", 1883, client_id="x") as s: ...``.

    ``will`` may be a function, called before each connection attempt (a will that carries a timestamp).
    ``clean_start`` and ``session_expiry`` (seconds; None: the session ends with the connection) say what
    the broker keeps for this client between connections. ``call_timeout`` bounds connecting, each
    SUBACK and each PUBACK."""

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
    ) -> None:
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
            if session_expiry is not None:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = session_expiry
                self._options["properties"] = properties
        else:
            self._options["clean_session"] = clean_start
        self._will = will
        self._backoff = backoff or Backoff()
        self._timeout = call_timeout
        self._filters: dict[str, int] = {}
        self._connect_hooks: list[ConnectHook] = []
        self._disconnect_hooks: list[DisconnectHook] = []
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._client: aiomqtt.Client | None = None  # set while a connection is up (hooks may publish)
        self._connected = asyncio.Event()  # set once subscriptions are active and the hooks are done
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self.connects = 0
        """Connections that reached CONNACK."""
        self.last_error: str | None = None
        """Why the last attempt failed or the last connection ended (None before the first)."""

    def __repr__(self) -> str:
        return f"Session(mqtt://{self.host}:{self.port} as {self.client_id}, connected={self.connected})"

    # -- the interface ---------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
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
        client = self._client
        if client is not None and self._connected.is_set():
            await self._subscribe(client, {topic_filter: qos})

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish now; SessionError when not connected, on failure, or without a PUBACK in time."""
        client = self._client
        if client is None:
            raise SessionError("not connected to the broker", topic=topic)
        try:
            await bounded(client.publish(topic, payload, qos=qos, retain=retain, timeout=UNBOUNDED), self._timeout)
        except aiomqtt.MqttError as exc:
            raise SessionError(f"publish failed: {exc}", topic=topic) from exc
        except TimeoutError:
            raise SessionError(f"publish failed: no PUBACK within {self._timeout:g}s", topic=topic) from None

    async def messages(self) -> AsyncGenerator[Message, None]:
        while True:
            yield await self._queue.get()

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

    def _new_client(self) -> aiomqtt.Client:
        will = self._will() if callable(self._will) else self._will
        if will is not None:
            will_option = aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain)
            return aiomqtt.Client(self.host, self.port, will=will_option, **self._options)
        return aiomqtt.Client(self.host, self.port, **self._options)

    async def _connection(self) -> str:
        """One connection from CONNECT to its loss; returns why it ended."""
        try:
            async with self._new_client() as client:
                raise_lost_cancellation()
                self.connects += 1
                self._backoff.connected()
                self._client = client
                subscribed: set[str] = set()
                await self._subscribe_recorded(client, subscribed)
                for hook in self._connect_hooks:
                    await hook()
                # Filters recorded while the hooks ran; no await between the last check and set().
                await self._subscribe_recorded(client, subscribed)
                self._connected.set()
                log.info("connected to mqtt://%s:%d as %s", self.host, self.port, self.client_id)
                async for message in client.messages:
                    self._queue.put_nowait(_message(message))
            return "connection closed"
        except (aiomqtt.MqttError, SessionError) as exc:
            return str(exc)
        finally:
            self._connected.clear()
            self._client = None

    async def _subscribe_recorded(self, client: aiomqtt.Client, done: set[str]) -> None:
        # Loop until nothing is left: subscribe() may record a filter while we await a SUBACK.
        while pending := {f: q for f, q in self._filters.items() if f not in done}:
            await self._subscribe(client, pending)
            done.update(pending)

    async def _subscribe(self, client: aiomqtt.Client, filters: dict[str, int]) -> None:
        topic = ", ".join(filters)
        try:
            granted = await bounded(client.subscribe(list(filters.items()), timeout=UNBOUNDED), self._timeout)
        except aiomqtt.MqttError as exc:
            raise SessionError(f"subscribe failed: {exc}", topic=topic) from exc
        except TimeoutError:
            raise SessionError(f"subscribe failed: no SUBACK within {self._timeout:g}s", topic=topic) from None
        for topic_filter, code in zip(filters, granted, strict=False):
            refused = code.is_failure if isinstance(code, ReasonCode) else code == _SUBACK_FAILURE
            if refused:
                raise SessionError(f"subscription refused: {code}", topic=topic_filter)


def _message(message: aiomqtt.Message) -> Message:
    return Message(message.topic.value, _payload(message.payload), message.retain, message.qos)


def _payload(value: object) -> bytes:
    # aiomqtt types payloads loosely; from the network they are bytes.
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return b"" if value is None else str(value).encode()
