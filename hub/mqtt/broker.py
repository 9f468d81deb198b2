"""The hub's MQTT boundary: its broker config on one :class:`mqtt_session.Session`, errors as BrokerError.

The session keeps one MQTT v5 connection alive, re-subscribes every recorded filter on each connection and
feeds one message queue that survives reconnects. The hub keeps no broker session (clean start, no session
expiry): whatever the broker held for a dead connection the agent sends again, because only the hub's ack,
not a PUBACK, lets the agent delete a record. That keeps hub replicas free of broker-side state.

Receive is bounded (``[broker] receive_maximum``, default 1): the broker sends at most that many
unacknowledged messages, each acknowledged when ingest takes it, so a hub that falls behind (its write queue
full) stops taking messages and the broker holds the backlog, not the hub's memory: the queue in front of
ingest holds at most ``receive_maximum`` messages (fewer than twice that right after a reconnect), each an
aggregates batch of at most 200 results (about 80 KB of JSON) or a smaller status or reported state. The
default is 1 because mosquitto 2.0 keeps to no other value (see :mod:`mqtt_session.session`); it costs a round
trip to the broker per message, about 3,000 messages/s on loopback, 600,000 results/s in full batches.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from hub.config import BrokerConfig
from hub.errors import BrokerError
from mqtt_session import Backoff, Message, Session, SessionError

Inbound = Message
"""A message as the hub sees it, free of MQTT library types."""


class MessageBus(Protocol):
    """What ingest needs from a broker connection; :class:`Broker` is the real one, ``hub.mqtt.fake.FakeBus`` a fake."""

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    async def wait_connected(self) -> None: ...

    def messages(self) -> AsyncGenerator[Inbound, None]: ...

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None: ...


class Broker(Session):
    """One resilient MQTT v5 connection: ``async with Broker(cfg) as b: await b.subscribe(...)``."""

    def __init__(self, config: BrokerConfig, *, backoff: Backoff | None = None, timeout: float = 10.0) -> None:
        super().__init__(
            config.host,
            config.port,
            client_id=config.client_id,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            keepalive=config.keepalive,
            clean_start=True,
            receive_maximum=config.receive_maximum or None,
            # Jitter spreads the reconnects of many hub replicas after a broker restart.
            backoff=backoff or Backoff(base=0.2, cap=30.0),
            call_timeout=timeout,
        )

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again on every reconnect."""
        try:
            await super().subscribe(topic_filter, qos)
        except SessionError as exc:
            raise BrokerError(exc.reason, topic=exc.topic) from exc

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK; BrokerError when not connected or refused."""
        try:
            await super().publish(topic, payload, qos=qos, retain=retain)
        except SessionError as exc:
            raise BrokerError(exc.reason, topic=exc.topic) from exc
