"""Publishes on the device broker with confirmation: QoS 1 publishes resolve an awaitable on their PUBACK."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.broker.buffered import BufferedClient
from edge_agent.broker.on_loop import PahoOnLoop
from edge_agent.errors import BrokerError

log = logging.getLogger(__name__)


class ConfirmedPublisher:
    """Its own paho client (clean session), on the event loop: nothing here waits on the intake's flow control."""

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
        reconnect_max: float = 30.0,
    ) -> None:
        self._host, self._port, self._keepalive = host, port, keepalive
        # VERSION1 callbacks: for VERSION2, paho builds a ReasonCode and a Properties object for every QoS 0
        # publish just to pass them to on_publish (12% of the agent's CPU at 5,000 results/s published), and
        # this client uses none of them.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Callback API version 1 is deprecated", DeprecationWarning)
            self._client = BufferedClient(
                CallbackAPIVersion.VERSION1, client_id=client_id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311
            )
        if username:
            self._client.username_pw_set(username, password)
        self._client.max_inflight_messages_set(1000)
        self._client.on_publish = self._on_publish
        self._driver = PahoOnLoop(
            self._client, name=f"local broker {host}:{port} (publisher)", reconnect_max=reconnect_max
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._confirms: dict[int, asyncio.Future[None]] = {}

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        try:
            self._client.connect_async(self._host, self._port, self._keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"local broker {self._host}:{self._port}: {exc}") from exc
        self._driver.start()

    async def aclose(self) -> None:
        await self._driver.aclose()
        confirms, self._confirms = self._confirms, {}
        for fut in confirms.values():
            if not fut.done():
                fut.set_exception(BrokerError("the local broker connection closed before the PUBACK"))

    # -- publishing --------------------------------------------------------------------------------------------
    def _on_publish(self, _c: mqtt.Client, _ud: Any, mid: int) -> None:
        fut = self._confirms.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Awaitable[None] | None:
        """Publish on the device broker; for QoS 1, an awaitable that resolves on the broker's PUBACK.

        While disconnected paho keeps QoS 1 messages and sends them after the reconnect."""
        assert self._loop is not None
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BrokerError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return None
        # PUBACKs are read on this loop, later: the future is registered before one can arrive.
        fut: asyncio.Future[None] = self._loop.create_future()
        self._confirms[info.mid] = fut
        return fut
