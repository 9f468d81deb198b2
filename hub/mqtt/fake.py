"""Fakes of the hub's boundaries for unit tests (shipped in the package, like httpx's mock transport)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from hub.errors import BrokerError
from hub.mqtt.broker import Inbound


@dataclass
class Published:
    """One message a fake published."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class FakeBus:
    """In-memory :class:`hub.mqtt.broker.MessageBus`: ``inject()`` delivers, ``published`` records what went out."""

    published: list[Published] = field(default_factory=list)
    filters: dict[str, int] = field(default_factory=dict)
    fail_publish: bool = False
    """While True, publish raises BrokerError as a dropped connection would."""

    def __post_init__(self) -> None:
        self._inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self.new_publish = asyncio.Event()

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.filters[topic_filter] = qos

    async def wait_connected(self) -> None:
        return None

    def inject(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        """Deliver a message as if the broker had sent it."""
        data = payload.encode() if isinstance(payload, str) else payload
        self._inbox.put_nowait(Inbound(topic, data, retain))

    async def messages(self) -> AsyncGenerator[Inbound, None]:
        while True:
            yield await self._inbox.get()

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if self.fail_publish:
            raise BrokerError("not connected to the broker", topic=topic)
        self.published.append(Published(topic, payload, qos, retain))
        self.new_publish.set()
