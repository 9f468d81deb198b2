"""Publishes on the device broker with confirmation: QoS 1 publishes resolve an awaitable on their PUBACK."""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from collections.abc import Awaitable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.errors import BrokerError

log = logging.getLogger(__name__)


class ConfirmedPublisher:
    """Its own paho client and network thread (clean session): nothing here waits on the intake."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        v5: bool = True,
    ) -> None:
        self._host, self._port, self._keepalive = host, port, keepalive
        # VERSION1 callbacks: for VERSION2, paho builds a ReasonCode and a Properties object for every QoS 0
        # publish just to pass them to on_publish (12% of the agent's CPU at 5,000 results/s published), and
        # this client uses none of them. It sets no other callback.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Callback API version 1 is deprecated", DeprecationWarning)
            self._client = mqtt.Client(
                CallbackAPIVersion.VERSION1, client_id=client_id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311
            )
        if username:
            self._client.username_pw_set(username, password)
        self._client.max_inflight_messages_set(1000)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_publish = self._on_publish
        self._loop: asyncio.AbstractEventLoop | None = None
        self._confirms: dict[int, asyncio.Future[None]] = {}
        self._confirm_lock = threading.Lock()
        self._registering = 0
        self._early: set[int] = set()

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        try:
            self._client.connect_async(self._host, self._port, self._keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"local broker {self._host}:{self._port}: {exc}") from exc
        self._client.loop_start()

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.disconnect)
        await asyncio.to_thread(self._client.loop_stop)

    def _on_publish(self, _c: mqtt.Client, _ud: Any, mid: int) -> None:
        # paho calls this holding its out-message lock, which publish() also takes: never wait on a lock here
        # that is held around client.publish, or the two threads deadlock.
        with self._confirm_lock:
            fut = self._confirms.pop(mid, None)
            if fut is None and self._registering:
                # The PUBACK beat publish() registering its future; publish() picks it up from here.
                self._early.add(mid)
        if fut is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(_resolve, fut)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Awaitable[None] | None:
        """Publish on the device broker; for QoS 1, an awaitable that resolves on the broker's PUBACK."""
        assert self._loop is not None
        if qos == 0:
            self._client.publish(topic, payload, 0, retain)
            return None
        fut: asyncio.Future[None] = self._loop.create_future()
        with self._confirm_lock:
            self._registering += 1
        try:
            info = self._client.publish(topic, payload, qos, retain)
        except BaseException:
            self._done_registering(None)
            raise
        ok = info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)
        if self._done_registering(info.mid if ok else None, fut):
            fut.set_result(None)
        if not ok:
            raise BrokerError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return fut

    def _done_registering(self, mid: int | None, fut: asyncio.Future[None] | None = None) -> bool:
        """Register ``fut`` for ``mid``'s PUBACK; True when that PUBACK already came."""
        with self._confirm_lock:
            self._registering -= 1
            early = mid is not None and mid in self._early
            if mid is not None and fut is not None and not early:
                self._confirms[mid] = fut
            if not self._registering:
                # Only mids seen while someone registers are kept; QoS 0 ones among them must not pile up.
                self._early.clear()
            else:
                self._early.discard(mid or 0)
        return early


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
