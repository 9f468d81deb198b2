"""Ingest: aggregates, status and reported state from the broker into the store, and acks back to the agents.

Per aggregates message: parse, check it fits (topic device == message device, every window id belongs to that
device, numbers finite), store the batch in one transaction, then ack exactly the sequences now durable as
ranges. Acking ranges rather than "the highest sequence" matters: if an earlier batch was lost on the way, a
highest-sequence ack would let the agent delete records the hub never stored. A record whose window id is
stored with other content (a conflict) is not acked as stored: a second Ack names it as refused, so the agent
gives it up into its loss ledger instead of resending it, and the hub counts it (metric, and per device).

Status and reported state go to the fleet registry; a device seen for the first time gets its first desired
state compiled (when the hub signs desired state). Anything that does not parse or fit is counted by reason
and logged; nothing a device sends stops the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import ValidationError

from edge_protocol.clocks import STEADY_WALL
from edge_protocol.messages import (
    CLOUD_MESSAGE,
    Ack,
    AggregateBatch,
    Refusal,
    Reported,
    SequencedResult,
    Status,
    ranges_of,
)
from edge_protocol.topics import Topics
from hub import metrics
from hub.db.store import Store
from hub.desired.publisher import DesiredPublisher
from hub.errors import BrokerError, StoreError
from hub.fleet.devices import DeviceSeen
from hub.fleet.registry import ReportedState
from hub.ingest.writes import BatchWrite, WriteQueue
from hub.mqtt.broker import Inbound, MessageBus

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0
"""Seconds a message already being stored gets to finish (store and ack) when ingest is cancelled."""


class Ingest:
    """Consumes ``$share/hub/{prefix}/devices/+/aggregates``, ``{prefix}/devices/+/status`` and ``.../reported``."""

    def __init__(
        self,
        store: Store,
        broker: MessageBus,
        topics: Topics,
        *,
        clock: Callable[[], float] = STEADY_WALL.now,
        grace: float = SHUTDOWN_GRACE,
        desired: DesiredPublisher | None = None,
        writes: WriteQueue | None = None,
    ) -> None:
        self._writes = writes or WriteQueue(store)
        self._desired = desired
        self._broker = broker
        self._topics = topics
        self._clock = clock
        self._grace = grace
        # What follows a commit (an ack, a first desired state), per message, while the next ones are read.
        self._follow_ups: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()
        """Set once every subscription is active on the broker."""

    async def run(self) -> None:
        """Subscribe and process messages until cancelled; on cancel, what is being committed is finished
        and acked (for up to ``grace`` s)."""
        writer = asyncio.create_task(self._writes.run(), name="hub.ingest.writes")
        try:
            await self._broker.subscribe(self._topics.shared("aggregates"), qos=1)
            await self._broker.subscribe(self._topics.all_devices("status"), qos=1)
            # Not shared: every replica keeps its view of the fleet and compiles a new device's first document.
            await self._broker.subscribe(self._topics.all_devices("reported"), qos=1)
            await self._broker.wait_connected()
            self.ready.set()
            async with contextlib.aclosing(self._broker.messages()) as messages:
                async for message in messages:
                    follow_up = await self._accept_safely(message)
                    if follow_up is not None:
                        task = asyncio.create_task(follow_up, name="hub.ingest.follow-up")
                        self._follow_ups.add(task)
                        task.add_done_callback(self._follow_ups.discard)
                    if writer.done():
                        writer.result()  # a crashed writer must not leave ingest queueing forever
                        raise RuntimeError("the ingest writer stopped")
        finally:
            self._writes.close()
            await _finish_within(self._grace, writer, *self._follow_ups)

    async def handle(self, message: Inbound) -> None:
        """Process one message to the end, its commit and ack included: for tests that drive ingest without a
        broker, and not while :meth:`run` runs."""
        follow_up = await self._accept(message)
        await self._writes.flush()
        if follow_up is not None:
            await follow_up

    async def _accept_safely(self, message: Inbound) -> Coroutine[Any, Any, None] | None:
        try:
            return await self._accept(message)
        except Exception:
            # A bug must not stop intake for the whole fleet: log it loudly and go on.
            metrics.REJECTED.labels("internal_error").inc()
            log.exception("ingest failed on a message on %s", message.topic)
            return None

    async def _accept(self, message: Inbound) -> Coroutine[Any, Any, None] | None:
        """Check ``message`` and queue its write; what is left to do once it is committed, if anything."""
        parsed = self._parse(message)
        if parsed is None:
            return None
        device, channel, msg = parsed
        if channel == "aggregates" and isinstance(msg, AggregateBatch):
            return await self._on_batch(device, msg)
        if channel == "status" and isinstance(msg, Status):
            # A retained status is replayed by the broker when we subscribe: it says when the device spoke, not
            # now. The will's ts is the agent's connect time, so statuses are applied in arrival order, not by ts.
            seen_at = msg.ts if message.retain else self._clock()
            stored = await self._writes.put(DeviceSeen(device, seen_at, msg.online, msg.agent_version))
            return self._seen_once_stored(device, stored)
        if channel == "reported" and isinstance(msg, Reported):
            metrics.HANDLER_FAILURE_COUNTS.observe(msg, retained=message.retain)
            now = self._clock()
            stored = await self._writes.put(ReportedState(msg, msg.ts if message.retain else now, now))
            return self._seen_once_stored(device, stored)
        self._reject("wrong_kind", message.topic, f"a {msg.kind!r} message does not belong here")
        return None

    def _parse(self, message: Inbound) -> tuple[str, str, AggregateBatch | Ack | Status | Reported] | None:
        """(device, channel, message), or None when it is rejected (counted and logged)."""
        parsed = self._topics.parse_device(message.topic)
        if parsed is None:
            self._reject("unexpected_topic", message.topic, "not a device topic under our prefix")
            return None
        device, channel = parsed
        metrics.MESSAGES.labels(channel).inc()
        if not message.payload:
            # An empty retained message is how a device's retained status is cleared: routine, so quiet.
            self._reject("empty", message.topic, "empty payload", level=logging.DEBUG)
            return None
        try:
            msg = CLOUD_MESSAGE.validate_json(message.payload)
        except ValidationError as exc:
            reason = "not_json" if any(e["type"] == "json_invalid" for e in exc.errors()) else "invalid"
            self._reject(reason, message.topic, _first_error(exc))
            return None
        if msg.device != device:
            metrics.ADMISSION_REFUSED.labels("device_mismatch").inc()  # a security event, not just bad input
            self._reject("device_mismatch", message.topic, f"message is from device {msg.device!r}")
            return None
        return device, channel, msg

    async def _on_batch(self, device: str, batch: AggregateBatch) -> Coroutine[Any, Any, None] | None:
        accepted: list[SequencedResult] = []
        for record in batch.records:
            refusal = _refusal(device, record)
            if refusal is None:
                accepted.append(record)
            else:
                # Not stored, so not acked: the agent's outbox keeps it until its TTL and counts the loss.
                metrics.RECORDS_REFUSED.labels(refusal).inc()
                if refusal == "foreign_window_id":  # a device writing under another's ids: a security event
                    metrics.ADMISSION_REFUSED.labels(refusal).inc()
                log.warning("device %s: refused record seq %d (%s): %s", device, record.seq, refusal, record.result.id)
        if not accepted:
            return None
        write = BatchWrite(device, accepted)
        stored = await self._writes.put(write)
        return self._ack_once_stored(write, stored)

    async def _ack_once_stored(self, write: BatchWrite, stored: asyncio.Future[bool]) -> None:
        if not await stored:
            return  # counted and logged by the writer; the agent resends
        device, refused = write.device, write.refused
        seqs = [rec.seq for rec in write.records if rec.seq not in refused]
        for rec in write.records:
            if rec.seq in refused:
                metrics.RECORDS_REFUSED.labels(refused[rec.seq]).inc()
                log.error(
                    "device %s: refused record seq %d (%s): window %s is stored with other content; the agent "
                    "counts it lost",
                    device,
                    rec.seq,
                    refused[rec.seq],
                    rec.result.id,
                )
        metrics.RECORDS_STORED.inc(len(seqs))
        acks = []
        if seqs:
            acks.append(Ack(device=device, ranges=ranges_of(seqs)))
        if refused:
            # In an Ack of its own, so that an older agent, which rejects the unknown key, still takes the first.
            acks.append(Ack(device=device, refused=[Refusal(seq=s, reason=r) for s, r in sorted(refused.items())]))
        for ack in acks:
            try:
                await self._broker.publish(self._topics.acks(device), ack.wire(), qos=1)
            except BrokerError as exc:
                # Stored but unacked: the agent resends, the store skips the duplicates (or refuses the
                # conflicts again) and we ack then.
                metrics.FAILURES.labels("ack").inc()
                log.warning(
                    "device %s: ack %s (refused %d) not published: %s", device, ack.ranges, len(ack.refused), exc
                )
                return
            metrics.ACKS.inc()

    async def _seen_once_stored(self, device: str, stored: asyncio.Future[bool]) -> None:
        if not await stored or self._desired is None:
            return
        try:
            await self._desired.device_seen(device)
        except StoreError as exc:
            # The publisher's start-up compile and the next change catch up with this device.
            metrics.FAILURES.labels("desired").inc()
            log.error("device %s: first desired state not compiled: %s", device, exc)

    def _reject(self, reason: str, topic: str, detail: str, *, level: int = logging.WARNING) -> None:
        metrics.REJECTED.labels(reason).inc()
        log.log(level, "rejected a message on %s (%s): %s", topic, reason, detail)


def _refusal(device: str, record: SequencedResult) -> str | None:
    """Why a record cannot be stored, or None."""
    result = record.result
    # The window id is the store's primary key: a device must not be able to occupy another device's ids.
    if not result.id.startswith(f"{device}/"):
        return "foreign_window_id"
    # JSON (and PostgreSQL's JSONB) has no Infinity or NaN: such a record could be stored but not read back.
    # Field states refuse them when parsed (allow_inf_nan=False); the window's bounds are checked here.
    if not (math.isfinite(result.window_start) and math.isfinite(result.window_end)):
        return "non_finite"
    return None


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"[:300]


async def _finish_within(grace: float, *tasks: asyncio.Task[None]) -> None:
    """Give ``tasks`` up to ``grace`` s to finish (also when we are being cancelled), then cancel the rest.

    A batch being stored when shutdown starts gets stored and acked instead of abandoned mid-way.
    """
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("ingest stopped with an error", exc_info=task.exception())
