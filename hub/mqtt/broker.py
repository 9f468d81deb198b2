"""The hub's MQTT boundary: the only hub module that imports aiomqtt.

:class:`Broker` keeps one MQTT v5 connection alive in a background task (reconnecting with capped, jittered
exponential backoff), re-subscribes every recorded filter on each connection, feeds one message queue that
survives reconnects, and publishes. The hub keeps no broker session (clean start, no session expiry):
whatever the broker held for a dead connection the agent sends again, because only the hub's ack, not a
PUBACK, lets the agent delete a record. That keeps hub replicas free of broker-side state.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Protocol

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from hub.config import BrokerConfig
from hub.errors import BrokerError

log = logging.getLogger(__name__)

# aiomqtt bounds its calls with asyncio.wait_for, which on Python 3.11 loses a cancellation that lands in the
# same loop turn as the reply (cpython#86296): the connection task goes on, and the TaskGroup that cancelled
# it waits for it forever (a hung shutdown). So aiomqtt waits without a timeout (a plain await, cancelled
# properly) and asyncio.timeout bounds the call.
_UNBOUNDED = math.inf


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as the hub sees it, free of MQTT library types."""

    topic: str
    payload: bytes
    retain: bool


class MessageBus(Protocol):
    """What ingest needs from a broker connection; :class:`Broker` is the real one, ``hub.mqtt.fake.FakeBus`` a fake."""

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    async def wait_connected(self) -> None: ...

    def messages(self) -> AsyncGenerator[Inbound, None]: ...

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None: ...


class Backoff:
    """Capped exponential backoff with jitter: delays in [d/2, d], d = min(cap, base * 2**attempt)."""

    def __init__(self, base: float = 0.2, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        # Jitter spreads the reconnects of many hub replicas after a broker restart.
        return random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self.attempt = 0


class _State(Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Broker:
    """One resilient MQTT v5 connection: ``async with Broker(cfg) as b: await b.subscribe(...)``."""

    def __init__(self, config: BrokerConfig, *, backoff: Backoff | None = None, timeout: float = 10.0) -> None:
        self._config = config
        self._backoff = backoff or Backoff()
        self._timeout = timeout
        self._filters: dict[str, int] = {}
        self._queue: asyncio.Queue[Inbound] = asyncio.Queue()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()  # set once connected *and* every recorded filter is subscribed
        self._state = _State.NEW
        self._tasks: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        """Why the last connection attempt failed or ended (None before the first failure)."""

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once connected with every filter recorded so far subscribed."""
        await self._connected.wait()

    async def __aenter__(self) -> Broker:
        if self._state is not _State.NEW:
            raise BrokerError(f"the broker connection is {self._state.value}; it opens once")
        self._state = _State.OPEN
        # The TaskGroup lives as long as this context: a crash of the connection task propagates to the
        # task that owns the Broker instead of leaving consumers waiting on a queue nobody fills.
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._supervisor = self._tasks.create_task(self._run(), name="hub.broker.connection")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._state = _State.CLOSED
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._tasks is not None:
            await self._tasks.__aexit__(exc_type, exc, tb)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again on every reconnect."""
        self._filters[topic_filter] = qos
        client = self._client
        if client is not None and self._connected.is_set():
            await self._subscribe(client, topic_filter, qos)

    async def messages(self) -> AsyncGenerator[Inbound, None]:
        """Every message received, across reconnects, in arrival order."""
        while True:
            yield await self._queue.get()

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK; BrokerError when not connected or refused."""
        client = self._client
        if client is None or not self._connected.is_set():
            raise BrokerError("not connected to the broker", topic=topic)
        try:
            async with asyncio.timeout(self._timeout):
                await client.publish(topic, payload, qos=qos, retain=retain, timeout=_UNBOUNDED)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"publish failed: {exc}", topic=topic) from exc
        except TimeoutError:
            raise BrokerError(f"publish failed: no PUBACK within {self._timeout:g}s", topic=topic) from None

    # -- connection task -------------------------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        cfg = self._config
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,
            keepalive=cfg.keepalive,
            timeout=self._timeout,
        )

    async def _subscribe(self, client: aiomqtt.Client, topic_filter: str, qos: int) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                granted = await client.subscribe(topic_filter, qos=qos, timeout=_UNBOUNDED)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"subscribe failed: {exc}", topic=topic_filter) from exc
        except TimeoutError:
            raise BrokerError(f"subscribe failed: no SUBACK within {self._timeout:g}s", topic=topic_filter) from None
        for code in granted:
            if isinstance(code, ReasonCode) and code.is_failure:
                raise BrokerError(f"subscription refused: {code}", topic=topic_filter)

    async def _run(self) -> None:
        cfg = self._config
        while True:
            try:
                async with self._new_client() as client:
                    _raise_lost_cancellation()
                    done: set[str] = set()
                    # Loop until nothing is left: subscribe() may record a filter while we await SUBACKs.
                    while pending := [f for f in self._filters if f not in done]:
                        for topic_filter in pending:
                            await self._subscribe(client, topic_filter, self._filters[topic_filter])
                            done.add(topic_filter)
                    self._client = client
                    self._connected.set()
                    self._backoff.reset()
                    log.info("connected to mqtt://%s:%d as %s", cfg.host, cfg.port, cfg.client_id)
                    async for message in client.messages:
                        inbound = Inbound(message.topic.value, _payload(message.payload), message.retain)
                        self._queue.put_nowait(inbound)
                reason = "connection closed"
            except (aiomqtt.MqttError, BrokerError) as exc:
                _raise_lost_cancellation()  # a cancellation can come back as the MqttError of a failed connect
                reason = str(exc)
            finally:
                self._connected.clear()
                self._client = None
            self.last_error = reason
            delay = self._backoff.next_delay()
            log.warning("broker mqtt://%s:%d: %s; reconnecting in %.1fs", cfg.host, cfg.port, reason, delay)
            await asyncio.sleep(delay)


def _raise_lost_cancellation() -> None:
    """Connecting still goes through aiomqtt's wait_for: re-raise a cancellation that it swallowed (a task
    that was asked to stop is still ``cancelling()`` after the swallow)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _payload(value: object) -> bytes:
    # aiomqtt types payloads loosely; from the network they are bytes.
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return b"" if value is None else str(value).encode()
