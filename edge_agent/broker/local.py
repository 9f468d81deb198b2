"""Intake from the device broker: a paho client on the agent's event loop, events handed over in batches.

paho's callback costs half of aiomqtt's per message (docs/decisions.md), and paho 2 has the manual acknowledgement
that at-least-once intake needs (aiomqtt 2.5 does not). The client has no network thread: the event loop reads
its socket (edge_agent/broker/on_loop.py). When the hand-off list is full, reading stops: the backlog stays in
the broker's session, and memory stays bounded by ``max_buffered`` plus what one read decodes plus one batch in
hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.broker.buffered import BufferedClient
from edge_agent.broker.on_loop import PahoOnLoop
from edge_agent.broker.publisher import ConfirmedPublisher
from edge_agent.errors import BrokerError
from edge_protocol.clocks import STEADY_WALL

log = logging.getLogger(__name__)

# Arrival times are read from the agent's steady wall clock, the clock of the windows' watermark: a jump of the
# wall clock must not move arrival-time windows (docs/architecture.md, step 5).
_now = STEADY_WALL.now

# An event's arrival is stamped when the socket read that holds it begins, and it is appended to the hand-off
# list within that read; the margin keeps the intake watermark safely behind any event stamped but not yet
# appended.
_HANDOFF_MARGIN = 0.05

HANDOFF = 100
"""Events handed to the intake at a time. Small, so that the socket is read again (the hand-off list has room)
while a dispatcher waits for its handler: with the whole list at once, a burst kept the list full until the
intake had queued all of it, and the agent and its handler took turns (docs/performance.md, "Two batches at the
handler, and the hand-off's memory found")."""


@dataclass(slots=True)
class Incoming:
    """One event as it arrived; ``mid`` is 0 for QoS 0 (nothing to acknowledge)."""

    mid: int
    topic: str
    payload: bytes
    qos: int
    dup: bool
    arrived: float
    refs: int = 0
    """Subscriptions still processing this event; acknowledged when it reaches zero."""


class LocalBroker:
    """Device-broker session: persistent, QoS 1 with manual acknowledgement, batched hand-off to asyncio."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        subscriptions: list[tuple[str, int]],
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        session_expiry: float = 86400.0,
        receive_maximum: int = 65535,
        max_buffered: int = 5_000,
        protocol: str = "3.1.1",
        broker_config: Path | None = None,
    ) -> None:
        self._host, self._port, self._keepalive = host, port, keepalive
        self._subscriptions = list(subscriptions)
        self._v5 = protocol == "5"
        # MQTT 3.1.1 (the default) decodes each PUBLISH at half the CPU: over MQTT 5 paho builds a Properties object
        # per message (docs/performance.md, "The default intake"). The session then lives until the broker's
        # persistent_client_expiration, and the broker's max_inflight_messages (not our Receive Maximum) bounds what
        # it sends us unacknowledged: configs/mosquitto/device.conf sets both, and ``broker_config`` checks them.
        self._broker_config = broker_config
        # Buffered: one read of the socket feeds many packets (edge_agent/broker/buffered.py).
        self._client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        if username:
            self._client.username_pw_set(username, password)
        self._connect_props: Properties | None = None
        if self._v5:
            self._connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            self._connect_props.SessionExpiryInterval = int(session_expiry)
            # mosquitto sends a manual-ack client only Receive Maximum unacknowledged messages (default 20).
            self._connect_props.ReceiveMaximum = receive_maximum
        self._driver = PahoOnLoop(self._client, name=f"local broker {host}:{port}", before_read=self._stamp_read)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._buffer: list[Incoming] = []
        self._read_at = _now()
        """The arrival time of the events being decoded: when the socket read that holds them began."""
        self._max_buffered = max_buffered
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()  # set once the broker accepted the session, on the loop
        # Publishes (dead letters, handler outputs) go over a connection of their own: intake backpressure stops
        # reading this client's socket, and a publish waiting for its PUBACK must never wait on that.
        self._publisher = ConfirmedPublisher(
            host=host,
            port=port,
            client_id=f"{client_id}-pub",
            username=username,
            password=password,
            keepalive=keepalive,
            v5=self._v5,
        )
        self._closing = False
        self._in_hand = False
        self._hand_first = 0.0
        self.connects = 0
        self.session_present = False

    # -- lifecycle -----------------------------------------------------------------------------------
    async def __aenter__(self) -> LocalBroker:
        if self._broker_config is not None:
            for problem in await asyncio.to_thread(check_broker_config, self._broker_config, v5=self._v5):
                log.warning("device broker config %s: %s", self._broker_config, problem)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            if self._v5:
                self._client.connect_async(
                    self._host, self._port, self._keepalive, clean_start=False, properties=self._connect_props
                )
            else:
                self._client.connect_async(self._host, self._port, self._keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"local broker {self._host}:{self._port}: {exc}") from exc
        self._driver.start()
        await self._publisher.start(self._loop)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closing = True
        await self._driver.aclose()
        await self._publisher.aclose()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once connected; callers bound the wait with ``asyncio.timeout``."""
        await self._connected.wait()

    # -- paho callbacks (on the loop) ------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: Any, flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", bool(reason)):
            log.error("local broker refused the connection: %s", reason)
            return
        self.session_present = bool(getattr(flags, "session_present", False))
        if self.connects and not self.session_present:
            # We asked for a persistent session and had one a moment ago: the broker dropped it (restarted without
            # persistence, or its session expiry is shorter than our time away).
            log.warning(
                "local broker %s:%s kept no session for us: events published while we were disconnected are lost "
                "(check persistence and %s)",
                self._host,
                self._port,
                "session_expiry" if self._v5 else "persistent_client_expiration",
            )
        self.connects += 1
        if self._subscriptions:
            client.subscribe(self._subscribe_args(self._subscriptions))
        self._connected.set()
        log.info("connected to local broker %s:%s", self._host, self._port)

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._connected.clear()
        if not self._closing:
            log.warning("local broker connection lost (%s); reconnecting", reason)

    def _stamp_read(self) -> None:
        # One clock reading per socket read, not per event: the events a read decodes were all in the socket when
        # it began (the reading cost 1.3 µs an event, about 5% of the agent's CPU in a burst).
        self._read_at = _now()

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        self._buffer.append(
            Incoming(msg.mid if msg.qos else 0, msg.topic, bytes(msg.payload), msg.qos, bool(msg.dup), self._read_at)
        )
        if len(self._buffer) >= self._max_buffered:
            self._driver.pause_reading()  # the backlog stays in the broker's session
        assert self._wake is not None
        self._wake.set()

    # -- asyncio side --------------------------------------------------------------------------------
    async def batches(self) -> AsyncIterator[list[Incoming]]:
        """What arrived since the last batch, oldest first and at most ``HANDOFF`` at a time, as soon as anything
        did."""
        assert self._wake is not None
        while not self._closing:
            await self._wake.wait()
            if len(self._buffer) <= HANDOFF:
                self._wake.clear()
                batch, self._buffer = self._buffer, []
            else:
                batch = self._buffer[:HANDOFF]
                del self._buffer[:HANDOFF]
            if len(self._buffer) < self._max_buffered:
                self._driver.resume_reading()
            if batch:
                self._hand_first = batch[0].arrived
                self._in_hand = True
                try:
                    yield batch
                finally:
                    self._in_hand = False

    def watermark(self) -> float:
        """Every event that arrived before this time has left the intake (is queued or processed).

        Arrival-time windows may close only behind it: an event stamped just before a window's end may still be
        on its way to a dispatcher's queue.
        """
        if self._in_hand:
            # The batch in hand may wait long in a full dispatcher queue (overflow = block): its oldest event
            # bounds the watermark, not the time the batch was taken.
            return self._hand_first - _HANDOFF_MARGIN
        buffer = self._buffer
        if buffer:
            return buffer[0].arrived - _HANDOFF_MARGIN
        return _now() - _HANDOFF_MARGIN

    def set_filters(self, filters: list[tuple[str, int]]) -> None:
        """Subscribe to exactly ``filters`` (topic filter, QoS) from now on, and after every reconnection.

        With a persistent session the broker also keeps filters from an earlier run that are no longer wanted:
        their events reach no dispatcher and are acknowledged as unrouted (counted).
        """
        old = dict(self._subscriptions)
        new = dict(filters)
        self._subscriptions = sorted(new.items())
        if not self._connected.is_set():
            return  # on_connect subscribes to the current list
        add = self._subscribe_args([(f, q) for f, q in new.items() if old.get(f) != q])
        remove = [f for f in old if f not in new]
        if add:
            self._client.subscribe(add)
        if remove:
            self._client.unsubscribe(remove)

    def _subscribe_args(self, filters: list[tuple[str, int]]) -> list[tuple[str, Any]]:
        if self._v5:
            return [(f, SubscribeOptions(qos=q)) for f, q in filters]
        return list(filters)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Awaitable[None] | None:
        """Publish on the device broker; for QoS 1, an awaitable that resolves on the broker's PUBACK."""
        return self._publisher.publish(topic, payload, qos, retain)

    def ack(self, mid: int, qos: int = 1) -> None:
        """Acknowledge one QoS 1 event to the broker (its result is durable).

        Not while disconnected: paho's reconnection drops what was queued meanwhile anyway. The broker redelivers
        (DUP, same packet id) what was left unacknowledged, and the dispatcher recognises it as committed."""
        if mid and self._connected.is_set():
            self._client.ack(mid, qos)


# What the 3.1.1 intake needs from the device broker (configs/mosquitto/device.conf), and mosquitto's defaults.
_INFLIGHT_MIN = 1000
"""Below this, mosquitto's max_inflight_messages caps the intake: at most that many events per acknowledgement round
trip, which waits for a commit (up to 10 ms). mosquitto's default is 20."""
_EXPIRY_MIN = 3600.0
_UNITS = {"h": 3600.0, "d": 86400.0, "w": 604800.0, "m": 2592000.0, "y": 31536000.0}


def _mosquitto_options(path: Path, depth: int = 0) -> dict[str, str]:
    """Option -> value (the last one wins, as in mosquitto) of a mosquitto.conf and the files of its include_dir."""
    options: dict[str, str] = {}
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "include_dir" and depth < 2:
            for included in sorted(Path(value.strip()).glob("*.conf")):
                options.update(_mosquitto_options(included, depth + 1))
        else:
            options[key] = value.strip()
    return options


def check_broker_config(path: Path, *, v5: bool = False) -> list[str]:
    """What in the device broker's configuration at ``path`` undermines the intake's guarantees (empty if none).

    Over MQTT 3.1.1 the broker alone decides how long our session lives (``persistent_client_expiration``) and
    how many events it sends us unacknowledged (``max_inflight_messages``); over either protocol
    ``max_queued_messages`` bounds the backlog it keeps for us, and drops beyond it.
    """
    try:
        options = _mosquitto_options(path)
    except OSError as exc:
        return [f"not readable ({exc}); the intake's broker settings are not checked"]
    problems: list[str] = []
    if options.get("persistence", "false") != "true":
        problems.append("persistence is off: a broker restart loses the backlog kept for the agent")
    queued = options.get("max_queued_messages")
    if queued is None:
        problems.append("max_queued_messages is not set: mosquitto's default (1000) drops a longer backlog")
    elif queued.isdigit() and int(queued) == 0:
        problems.append("max_queued_messages 0 is unbounded: a long outage can exhaust the device's memory")
    if not v5:
        inflight = options.get("max_inflight_messages")
        if inflight is None or (inflight.isdigit() and 0 < int(inflight) < _INFLIGHT_MIN):
            problems.append(
                f"max_inflight_messages is {inflight or 'not set (20)'}: it caps the MQTT 3.1.1 intake at that "
                f'many unacknowledged events; set it to 65535 (or protocol = "5", whose Receive Maximum does this)'
            )
        expiry = options.get("persistent_client_expiration")
        if expiry is not None:
            number, unit = expiry[:-1], expiry[-1:]
            if number.isdigit() and unit in _UNITS and int(number) * _UNITS[unit] < _EXPIRY_MIN:
                problems.append(
                    f"persistent_client_expiration {expiry}: an agent down longer loses its backlog and session"
                )
    return problems
