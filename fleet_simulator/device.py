"""One virtual device: its own MQTT session (client id = device id, a retained offline will), its windows,
its outbox, its reported state and its desired state, as :mod:`edge_agent`'s uplink and reconciler do."""

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
        # Made for each connection attempt: the offline status says when the device was last heard of.
        return Will(self.topics.status(self.id), status_payload(self.id, False, time.time()), qos=1, retain=True)

    async def _sessions(self, stop: asyncio.Event) -> None:
        session = Session(
            self.config.host, self.config.port, client_id=self.id, will=self._will, clean_start=True,
            keepalive=self.config.keepalive, backoff=Backoff(base=0.5, cap=30.0), call_timeout=CALL_TIMEOUT,
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

    def _on_disconnect(self, reason: str) -> None:
        self.stats.disconnects += 1
        if self._up:
            self._up = False
            self.stats.connected -= 1

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
                    # or the requeue of the next connection.
                    log.warning("%s: batch not sent: %s", self.id, exc)
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
