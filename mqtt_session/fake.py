"""An in-memory :class:`mqtt_session.interface.MqttSession` for unit tests (shipped in the package, like
httpx's mock transport): ``inject()`` delivers, ``published`` records what went out, ``drop()`` and
``reconnect()`` play a lost and a new connection. Integration tests use a real broker instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mqtt_session.interface import ConnectHook, DisconnectHook, Message, SessionError

if TYPE_CHECKING:
    from mqtt_session.interface import MqttSession


@dataclass(frozen=True)
class Published:
    """One message the fake published."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class FakeSession:
    """Connected from the start (``connected=False`` to begin offline); ``run()`` calls the connect hooks."""

    published: list[Published] = field(default_factory=list)
    filters: dict[str, int] = field(default_factory=dict)
    fail_publish: bool = False
    """While True, publish raises SessionError as a dropped connection would."""
    start_connected: bool = True
    connects: int = 0
    last_error: str | None = None
    high_water: int = 0
    """The most messages queued for ``messages()`` at once."""

    def __post_init__(self) -> None:
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._connect_hooks: list[ConnectHook] = []
        self._disconnect_hooks: list[DisconnectHook] = []
        self.new_publish = asyncio.Event()
        """Set on every publish; clear it to wait for the next one."""
        self._link_up = self.start_connected  # publishes work from here; connected waits for the hooks
        if self.start_connected:
            self._connected.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def add_connect_hook(self, hook: ConnectHook) -> None:
        self._connect_hooks.append(hook)

    def add_disconnect_hook(self, hook: DisconnectHook) -> None:
        self._disconnect_hooks.append(hook)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.filters[topic_filter] = qos

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if self.fail_publish or not self._link_up:
            raise SessionError("not connected to the broker", topic=topic)
        self.published.append(Published(topic, payload, qos, retain))
        self.new_publish.set()

    @property
    def pending(self) -> int:
        return self._inbox.qsize()

    async def messages(self) -> AsyncGenerator[Message, None]:
        while True:
            yield await self._inbox.get()

    async def run(self) -> None:
        """Call the connect hooks if connected, then wait to be cancelled."""
        if self.connected:
            await self._connect()
        await asyncio.Future()

    # -- test controls ---------------------------------------------------------------------------------------

    def inject(self, topic: str, payload: bytes | str, *, retain: bool = False, qos: int = 1) -> None:
        """Deliver a message as if the broker had sent it."""
        data = payload.encode() if isinstance(payload, str) else payload
        self._inbox.put_nowait(Message(topic, data, retain, qos))
        self.high_water = max(self.high_water, self._inbox.qsize())

    def drop(self, reason: str = "connection lost") -> None:
        """Lose the connection: publishes fail until :meth:`reconnect`."""
        self._connected.clear()
        self._link_up = False
        self.last_error = reason
        for hook in self._disconnect_hooks:
            hook(reason)

    async def reconnect(self) -> None:
        """A new connection: the connect hooks run (they may publish), then ``wait_connected()`` returns."""
        await self._connect()

    async def _connect(self) -> None:
        self._link_up = True
        self.connects += 1
        for hook in self._connect_hooks:
            await hook()
        self._connected.set()


if TYPE_CHECKING:  # mypy checks that the fake keeps the real session's interface

    def _conforms(fake: FakeSession) -> MqttSession:
        return fake
