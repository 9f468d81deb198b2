"""One resilient MQTT session for every aiomqtt user: the agent's cloud link, the hub, the fleet simulator.

It reconnects forever with one :class:`Backoff`, subscribes again and calls the connect hooks on every
connection, bounds each call (with the one workaround of :mod:`mqtt_session.cancellation`), and delivers
inbound messages through ``messages()``. :class:`FakeSession` is the in-memory one for unit tests. The
agent's local intake keeps its own paho clients: they are the fast path.
"""

from mqtt_session.backoff import Backoff, retry_delay
from mqtt_session.fake import FakeSession, Published
from mqtt_session.interface import ConnectHook, DisconnectHook, Message, MqttSession, SessionError, Will
from mqtt_session.session import Session

__all__ = [
    "Backoff",
    "ConnectHook",
    "DisconnectHook",
    "FakeSession",
    "Message",
    "MqttSession",
    "Published",
    "Session",
    "SessionError",
    "Will",
    "retry_delay",
]
