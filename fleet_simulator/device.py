"""One virtual device: its own MQTT session (client id = device id, a retained offline will), its windows,
its outbox, its reported state and its desired state, as :mod:`edge_agent`'s uplink and reconciler do.

Each device logs its connection attempts, connections and losses (:class:`SessionLog`, monotonic times) and
reports them with its outbox's counters in :meth:`VirtualDevice.snapshot`: what a test of reconnect storms reads
instead of the logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from pydantic import ValidationError

from edge_protocol.messages import Ack
from edge_protocol.topics import Topics
from fleet_simulator.messages import (
    RecordTemplate,
    SimSubscription,
    SubscriptionCounters,
    batch_payload,
    reported_payload,
    status_payload,
)
from fleet_simulator.outbox import SimOutbox
from fleet_simulator.state import Behaviour, DeviceState
from mqtt_session import Backoff, Session, SessionError, Will

log = logging.getLogger(__name__)

RECONNECT_BASE, RECONNECT_CAP = 0.5, 30.0
"""The session's backoff (the agent's defaults): a jittered delay in [d/2, d], d = min(cap, base x 2**attempt)."""
SEND_RETRY = 0.5
"""Seconds before a batch whose publish failed on a connection still up is tried again (after a lost connection
the next one requeues it)."""
CALL_TIMEOUT = 30.0
"""Seconds that connecting, a SUBACK or a PUBACK may take: a broker under a whole fleet's load is slow."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What ``hub simulate`` runs; every device gets the same settings."""

    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edgefleet"
    devices: int = 10
    device_prefix: str = "sim"
    window: float = 10.0
    rate: float = 1.0
    """Window results per second per device, spread over its subscriptions."""
    backlog: int = 0
    """Windows each device has already closed when it starts (an outbox that waited for the hub)."""
    aligned: bool = False
    """Close every device's windows at the same instants; default: a phase per device, for a steady load."""
    subscription: str = "sim"
    batch: int = 200
    max_unacked: int = 2000
    resend_after: float = 15.0
    report_every: float = 10.0
    keepalive: int = 60
    behaviour: Behaviour = field(default_factory=Behaviour)


@dataclass
class FleetStats:
    """Counters every device adds to; the fleet prints them."""

    connected: int = 0
    connects: int = 0
    disconnects: int = 0
    first_sends: int = 0
    windows: int = 0
    ack_waits: array[float] = field(default_factory=lambda: array("d"))
    record_file: IO[str] | None = None

    def record(self, ids: list[str], at: float) -> None:
        if self.record_file is not None:
            stamp = f"\t{at:.6f}\n"
            self.record_file.write(stamp.join(ids) + stamp)


@dataclass(frozen=True, slots=True)
class Connection:
    """One connection of a device's session, in ``time.monotonic()`` seconds."""

    due_at: float
    """When the backoff let the attempt that succeeded go: the end of its jittered delay (the first connection's
    start). What the fleet would do; ``attempt_at`` trails it by this process's event-loop lag."""
    attempt_at: float
    """When that attempt began here (its CONNECT about to go out)."""
    connected_at: float
    """When it was up: CONNACK, subscriptions granted and the online status acknowledged."""
    attempts: int
    """Attempts since the previous connection ended (or since the start), this one included."""


@dataclass(slots=True)
class SessionLog:
    """A device's connection attempts, connections and the losses of established connections."""

    attempts: int = 0
    """Every attempt to connect, successful or not."""
    connections: list[Connection] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    """When a connection that was up ended (monotonic)."""
    _due_at: float | None = None
    _attempt_at: float | None = None
    _since: int = 0

    def scheduled(self, due_at: float) -> None:
        """The backoff chose when the next attempt goes."""
        self._due_at = due_at

    def attempt(self, now: float) -> None:
        self.attempts += 1
        self._since += 1
        self._attempt_at = now
        if self._due_at is None:  # the first attempt: no delay before it
            self._due_at = now

    def connected(self, now: float) -> None:
        attempt_at = now if self._attempt_at is None else self._attempt_at
        due_at = attempt_at if self._due_at is None else self._due_at
        self.connections.append(Connection(due_at, attempt_at, now, self._since))
        self._since = 0
        self._due_at = None

    def lost(self, now: float) -> None:
        self.losses.append(now)


class _LoggedBackoff(Backoff):
    """The session's backoff, telling the device's log when each next attempt is due."""

    def __init__(self, log_: SessionLog) -> None:
        super().__init__(base=RECONNECT_BASE, cap=RECONNECT_CAP)
        self._log = log_

    def next_delay(self) -> float:
        delay = super().next_delay()
        self._log.scheduled(time.monotonic() + delay)
        return delay


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """One device's figures at one moment (:meth:`VirtualDevice.snapshot`)."""

    id: str
    connected: bool
    attempts: int
    connections: tuple[Connection, ...]
    losses: tuple[float, ...]
    windows: int
    """Windows closed."""
    generated: int
    """Records made (one per window and group); their sequences are 1..generated."""
    sent: int
    """Records sent at least once (oldest first, so sequences 1..sent)."""
    acked: int
    """Records the hub acknowledged."""
    acked_through: int
    """Every record up to this sequence is acknowledged."""
    resent: int

    @property
    def pending(self) -> int:
        return self.generated - self.acked


class VirtualDevice:
    def __init__(self, device: str, index: int, config: SimConfig, stats: FleetStats, state: DeviceState) -> None:
        self.id = device
        self.config = config
        self.stats = stats
        self.state = state
        self.topics = Topics(config.prefix)
        self.outbox = SimOutbox(batch=config.batch, max_unacked=config.max_unacked, resend_after=config.resend_after)
        self.counters: dict[str, SubscriptionCounters] = {}
        self._phase = 0.0 if config.aligned else index / max(1, config.devices)
        self._wake = asyncio.Event()
        self._report_now = asyncio.Event()
        self._subs_changed = asyncio.Event()
        self._templates: dict[SimSubscription, RecordTemplate] = {}
        self._up = False  # counted in stats.connected
        self.sessions = SessionLog()
        self.windows = 0

    def snapshot(self) -> DeviceStats:
        """This device's connections and outbox counters now."""
        box, log_ = self.outbox, self.sessions
        return DeviceStats(
            id=self.id, connected=self._up, attempts=log_.attempts, connections=tuple(log_.connections),
            losses=tuple(log_.losses), windows=self.windows, generated=box.generated, sent=box.sent_through,
            acked=box.acked, acked_through=box.acked_through, resent=box.resent,
        )  # fmt: skip

    def records(self, through: int | None = None) -> dict[str, int]:
        """Window id -> events of every record this device made, up to sequence ``through`` (all without)."""
        return {window: events for _seq, window, events in self.outbox.ledger.records(through)}

    async def run(self, stop: asyncio.Event, clock: Callable[[], float] = time.time) -> None:
        """Produce windows and keep a session until ``stop`` is set; then publish offline and leave."""
        windows = asyncio.create_task(self._windows(clock), name=f"sim.{self.id}.windows")
        try:
            await self._sessions(stop)
        finally:
            windows.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await windows

    # -- windows -------------------------------------------------------------------------------------------

    def subscriptions(self) -> list[SimSubscription]:
        subs = self.state.subscriptions
        return subs if subs is not None else [SimSubscription.synthetic(self.config.subscription, self.config.window)]

    def _template(self, sub: SimSubscription) -> tuple[RecordTemplate, int]:
        groups = max(1, round(self.config.rate * sub.every / len(self.subscriptions())))
        template = self._templates.get(sub)
        if template is None:
            events = round(self.state.behaviour.event_rate * sub.every / groups)
            template = self._templates[sub] = RecordTemplate(self.id, sub, events)
        return template, groups

    def _close(self, sub: SimSubscription, start: float) -> None:
        template, groups = self._template(sub)
        self.outbox.add_window(template, round(start, 3), groups)
        c = self.counters.get(sub.name, SubscriptionCounters())
        self.counters[sub.name] = SubscriptionCounters(c.events + template.events * groups, c.windows + 1)
        self.windows += 1
        self.stats.windows += 1
        self._wake.set()

    async def _windows(self, clock: Callable[[], float]) -> None:
        if self.config.rate <= 0:
            return
        opened: dict[SimSubscription, float] = {}
        first = True
        while True:
            now = clock()
            for sub in self.subscriptions():
                offset = self._phase * sub.every
                current = math.floor((now - offset) / sub.every) * sub.every + offset
                if sub not in opened:
                    opened[sub] = current
                    for k in range(self.config.backlog if first else 0, 0, -1):
                        self._close(sub, current - k * sub.every)
                while opened[sub] + sub.every <= now:
                    self._close(sub, opened[sub])
                    opened[sub] += sub.every
            first = False
            live = set(self.subscriptions())
            opened = {sub: start for sub, start in opened.items() if sub in live}
            due = min((start + sub.every for sub, start in opened.items()), default=None)
            self._subs_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if due is None else max(0.0, due - clock())):
                    await self._subs_changed.wait()

    # -- session ---------------------------------------------------------------------------------------------

    def _will(self) -> Will:
        # Made for each connection attempt (so the attempt is logged here): the offline status says when the
        # device was last heard of.
        self.sessions.attempt(time.monotonic())
        return Will(self.topics.status(self.id), status_payload(self.id, False, time.time()), qos=1, retain=True)

    async def _sessions(self, stop: asyncio.Event) -> None:
        session = Session(
            self.config.host, self.config.port, client_id=self.id, will=self._will, clean_start=True,
            keepalive=self.config.keepalive, backoff=_LoggedBackoff(self.sessions),
            call_timeout=CALL_TIMEOUT,
        )  # fmt: skip
        session.add_connect_hook(lambda: self._on_connect(session))
        session.add_disconnect_hook(self._on_disconnect)
        await session.subscribe(self.topics.acks(self.id), qos=1)
        await session.subscribe(self.topics.desired(self.id), qos=1)
        try:
            async with session, asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._receive(session)),
                    tg.create_task(self._send(session)),
                    tg.create_task(self._report(session)),
                ]
                await stop.wait()
                with contextlib.suppress(SessionError, TimeoutError):
                    async with asyncio.timeout(2):
                        await session.publish(self.topics.status(self.id), status_payload(self.id, False, time.time()),
                                              qos=1, retain=True)  # fmt: skip
                for task in tasks:
                    task.cancel()
        finally:
            if self._up:
                self._up = False
                self.stats.connected -= 1

    async def _on_connect(self, session: Session) -> None:
        online = status_payload(self.id, True, time.time())
        await session.publish(self.topics.status(self.id), online, qos=1, retain=True)
        self.outbox.requeue()  # whatever was in flight on the last connection may be lost
        self._report_now.set()
        self._up = True
        self.stats.connected += 1
        self.stats.connects += 1
        self.sessions.connected(time.monotonic())

    def _on_disconnect(self, reason: str) -> None:
        self.stats.disconnects += 1
        if self._up:
            self._up = False
            self.stats.connected -= 1
            self.sessions.lost(time.monotonic())

    async def _receive(self, session: Session) -> None:
        desired, acks = self.topics.desired(self.id), self.topics.acks(self.id)
        async with contextlib.aclosing(session.messages()) as messages:
            async for message in messages:
                if message.topic == desired:
                    if self.state.on_desired(message.payload, time.time()):
                        self._subs_changed.set()
                        self._report_now.set()
                elif message.topic == acks:
                    try:
                        ack = Ack.model_validate_json(message.payload)
                    except ValidationError:
                        log.warning("%s: ignored an invalid ack", self.id)
                        continue
                    if ack.device == self.id:
                        self.stats.ack_waits.extend(self.outbox.ack(ack.ranges, time.monotonic()))
                        self._wake.set()

    async def _send(self, session: Session) -> None:
        topic = self.topics.aggregates(self.id)
        while True:
            await session.wait_connected()
            self._wake.clear()
            seqs, first = self.outbox.take()
            if seqs:
                at = time.time()
                payload = batch_payload(self.id, at, self.outbox.render(seqs))
                try:
                    await session.publish(topic, payload, qos=1)
                except SessionError as exc:
                    # Unsent records are taken again: first sends from sent_through, resends by their timer
                    # or the requeue of the next connection. A lost connection: the session is no longer
                    # connected and the loop waits for the next one. A failure on a connection still up: a pause,
                    # or a publish failing without yielding would spin the loop, starving every other device.
                    log.warning("%s: batch not sent: %s", self.id, exc)
                    if session.connected:
                        await asyncio.sleep(SEND_RETRY)
                    continue
                self.outbox.sent(seqs, time.monotonic())
                if first:
                    self.stats.first_sends += len(seqs)
                    self.stats.record(self.outbox.window_ids(seqs), at)
                continue
            due = self.outbox.resend_due_in(time.monotonic())
            if due is not None and due <= 0:
                self.outbox.requeue()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due):
                    await self._wake.wait()

    async def _report(self, session: Session) -> None:
        while True:
            await session.wait_connected()
            self._report_now.clear()
            now = time.time()
            payload = reported_payload(
                self.id,
                applied_version=self.state.applied_version,
                handlers=self.state.handler_reports(now),
                subscriptions=self.counters,
                outbox_pending=self.outbox.pending,
                last_refusal=self.state.last_refusal,
                ts=now,
            )
            try:
                await session.publish(self.topics.reported(self.id), payload, qos=1, retain=True)
            except SessionError as exc:
                log.warning("%s: reported state not sent: %s", self.id, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.report_every):
                    await self._report_now.wait()
