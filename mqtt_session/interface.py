"""What a session offers its users, free of MQTT library types: the real :class:`mqtt_session.Session` and
the in-memory :class:`mqtt_session.FakeSession` both satisfy :class:`MqttSession`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

ConnectHook = Callable[[], Awaitable[None]]
"""Awaited after each (re)connection, subscriptions already active: announce, re-send, re-read state."""

DisconnectHook = Callable[[str], None]
"""Called with the reason when an attempt fails or a connection ends (not when the session is stopped)."""


class SessionError(Exception):
    """A call failed: not connected, refused by the broker, or no reply within the call timeout."""

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        self.reason = reason
        self.topic = topic
        super().__init__(f"{reason} (topic {topic})" if topic else reason)


@dataclass(frozen=True, slots=True)
class Message:
    """One inbound message."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0


@dataclass(frozen=True, slots=True)
class Will:
    """What the broker publishes for a client that vanished without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttSession(Protocol):
    """One MQTT session that stays up: filters are subscribed again and hooks called on every connection."""

    @property
    def connected(self) -> bool: ...

    async def wait_connected(self) -> None:
        """Return once connected, every filter subscribed so far active and every connect hook done."""

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Record ``topic_filter`` (subscribed on every connection) and subscribe now if connected."""

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and, for QoS 1, wait for the PUBACK; :class:`SessionError` when that is not possible."""

    def messages(self) -> AsyncGenerator[Message, None]:
        """Every message received, across reconnects, in arrival order (one queue: one reader at a time)."""

    @property
    def pending(self) -> int:
        """Messages received and not yet taken by the reader of ``messages()``."""

    @property
    def high_water(self) -> int:
        """The most messages ``pending`` has been."""

    def add_connect_hook(self, hook: ConnectHook) -> None: ...

    def add_disconnect_hook(self, hook: DisconnectHook) -> None: ...

    async def run(self) -> None:
        """Stay connected until cancelled."""
