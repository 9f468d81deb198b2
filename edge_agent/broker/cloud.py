"""The cloud link with aiomqtt: low message rates, where asyncio ergonomics win over paho's callbacks."""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from edge_agent.broker.backoff import retry_delay
from edge_agent.errors import BrokerError

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0
"""Seconds that a SUBACK or PUBACK may take."""

# aiomqtt bounds its calls with asyncio.wait_for, which on Python 3.11 loses a cancellation that lands in the
# same loop turn as the reply (cpython#86296): the task goes on, and a TaskGroup that already cancelled it
# waits for it forever (a hung shutdown). So aiomqtt waits without a timeout (a plain await, which is
# cancelled properly) and asyncio.timeout bounds the call.
_UNBOUNDED = math.inf


def client_tls(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """TLS that verifies the broker against ``ca`` and, with ``cert``/``key``, identifies this client."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


class CloudBroker:
    """Cloud-broker session with aiomqtt: reconnects with capped, jittered exponential backoff."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        will: tuple[str, bytes] | None = None,
        reconnect_max: float = 30.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._kwargs: dict[str, Any] = {
            "identifier": client_id,
            "username": username,
            "password": password,
            "keepalive": keepalive,
            "protocol": aiomqtt.ProtocolVersion.V5,
        }
        if will is not None:
            self._kwargs["will"] = aiomqtt.Will(will[0], will[1], qos=1, retain=True)
        if tls is not None:
            self._kwargs["tls_context"] = tls
        self._reconnect_max = reconnect_max
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()

    async def run(
        self,
        subscribe: list[str],
        on_connect: Callable[[], Awaitable[None]],
        on_message: Callable[[str, bytes], Awaitable[None]],
    ) -> None:
        """Stay connected until cancelled, calling ``on_connect`` after each (re)connection."""
        attempt = 0
        while True:
            try:
                async with aiomqtt.Client(self._host, self._port, **self._kwargs) as client:
                    _raise_lost_cancellation()
                    self._client = client
                    attempt = 0
                    for topic in subscribe:
                        await _subscribe(client, topic)
                    self.connected.set()
                    await on_connect()
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        await on_message(str(message.topic), payload)
            except aiomqtt.MqttError as exc:
                _raise_lost_cancellation()  # a cancellation can come back as the MqttError of a failed connect
                self.connected.clear()
                self._client = None
                delay = retry_delay(attempt, self._reconnect_max)
                attempt += 1
                log.warning("cloud broker %s:%s: %s; retrying in %.1fs", self._host, self._port, exc, delay)
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                self._client = None

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish now; raise :class:`BrokerError` when not connected or the publish fails."""
        client = self._client
        if client is None:
            raise BrokerError("cloud broker not connected")
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await client.publish(topic, payload, qos=qos, retain=retain, timeout=_UNBOUNDED)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"cloud publish to {topic}: {exc}") from exc
        except TimeoutError:
            raise BrokerError(f"cloud publish to {topic}: no PUBACK within {CALL_TIMEOUT:g}s") from None


async def _subscribe(client: aiomqtt.Client, topic: str) -> None:
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            await client.subscribe(topic, qos=1, timeout=_UNBOUNDED)
    except TimeoutError:
        raise aiomqtt.MqttError(f"no SUBACK for {topic} within {CALL_TIMEOUT:g}s") from None


def _raise_lost_cancellation() -> None:
    """Connecting still goes through aiomqtt's wait_for: re-raise a cancellation that it swallowed (a task
    that was asked to stop is still ``cancelling()`` after the swallow)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
