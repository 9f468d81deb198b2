"""The hub's fake broker for unit tests: :class:`mqtt_session.FakeSession` raising the hub's BrokerError."""

from __future__ import annotations

from hub.errors import BrokerError
from mqtt_session import FakeSession, Published, SessionError

__all__ = ["FakeBus", "Published"]


class FakeBus(FakeSession):
    """In-memory :class:`hub.mqtt.broker.MessageBus`: ``inject()`` delivers, ``published`` records what went out."""

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        try:
            await super().publish(topic, payload, qos=qos, retain=retain)
        except SessionError as exc:
            raise BrokerError(exc.reason, topic=exc.topic) from exc
