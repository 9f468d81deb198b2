"""One subscription's pipeline: queue -> handler -> windows -> outbox, with dead letters for every reject.

An event is acknowledged to the local broker only after the commit that contains its effect (closed windows
and the checkpoint of open ones) and its dead letter or local publications are durable. The commits are
grouped and run beside the pipeline (:mod:`edge_agent.group_commit`), at most one every ``commit_interval``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

from edge_agent.aggregation.groups import group_key
from edge_agent.aggregation.windows import WindowSet, numeric_values
from edge_agent.broker import Incoming
from edge_agent.counters import SubscriptionCounters
from edge_agent.group_commit import Ack, AppliedBatch, GroupCommitter, WindowCommits
from edge_agent.runtime.base import EventTuple, Failure, HandlerRuntime, Outcome
from edge_protocol.clocks import STEADY_WALL, SteadyWallClock, wall_clock
from edge_protocol.deadletter import DeadLetter, DeadLetterReason
from edge_protocol.specs import SubscriptionSpec

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], Awaitable[None] | None]


class Dispatcher:
    """Feeds one subscription's events to its handler in batches and aggregates the results."""

    def __init__(
        self,
        spec: SubscriptionSpec,
        *,
        runtime: HandlerRuntime,
        windows: WindowSet,
        outbox: WindowCommits,
        publish: Publish,
        ack: Ack,
        deadletter_topic: str,
        max_payload: int,
        batch_size: int = 500,
        linger: float = 0.0,
        commit_interval: float = 0.01,
        clock: Callable[[], float] | SteadyWallClock = STEADY_WALL,
        intake_watermark: Callable[[], float] | None = None,
        alarm: Callable[[str, bool], None] | None = None,
        checkpoint_key: str | None = None,
        delivered: dict[int, bytes] | None = None,
        delivered_key: str | None = None,
    ) -> None:
        """``delivered``: packet id -> digest of the event committed under it, as the outbox remembers it from
        the last run (see ``put``). ``clock``: the time of the watermark and of arrivals, the agent's steady wall
        clock (it does not follow jumps of the wall clock) unless a test gives its own."""
        self.spec = spec
        self.runtime = runtime
        self.windows = windows
        self.counters = SubscriptionCounters()
        self._outbox = outbox
        self._publish = publish
        self._ack = ack
        self._dl_topic = deadletter_topic
        self._max_payload = max_payload
        self._batch = batch_size
        self._linger = linger
        if isinstance(clock, SteadyWallClock):
            resumed = windows.resumes_at()
            if resumed is not None and spec.event_time_field is None:
                # Arrival times come from this clock: where the last run's watermark got to, this run goes on
                # from, even when the wall clock is now behind it, so that no window closed then opens again.
                clock.not_before(resumed)
            clock = clock.now
        self._clock = clock
        self._intake_watermark = intake_watermark or clock
        self._checkpoint_key = checkpoint_key or spec.name
        # Packet ids are per broker session: an intake worker keeps its own under its part's key.
        self._delivered_key = delivered_key or spec.name
        self._group = group_key(spec.group_by)
        self._key = group_key([spec.key]) if spec.key else None
        self._queue: collections.deque[Incoming] = collections.deque()
        self._sent: collections.deque[_Sent] = collections.deque()
        """Batches with the handler, oldest first: at most two, the second sent while the first's outcomes are
        on their way (see ``_run``)."""
        self._has_items = asyncio.Event()
        self._full = asyncio.Event()
        """A whole batch is queued (or the dispatcher is closing): a lingering batch goes now."""
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._close_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._running = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._commits = GroupCommitter(
            name=spec.name,
            outbox=outbox,
            checkpoint_key=self._checkpoint_key,
            checkpoint=windows.snapshot,
            counters=self.counters,
            ack=ack,
            alarm=alarm or (lambda _name, _on: None),
            batch_size=batch_size,
            interval=commit_interval,
            delivered=delivered,
        )

    def switch_runtime(self, runtime: HandlerRuntime) -> None:
        """The next batch goes to ``runtime``; those in flight finish where they are."""
        self.runtime = runtime

    # -- intake side ---------------------------------------------------------------------------------
    async def put(self, msg: Incoming) -> None:
        """Queue one event; under ``block`` waits for room, under ``drop-oldest`` drops (and counts) one.

        A redelivery (DUP) of an event whose effect is already committed -- the agent died between its commit and
        the broker receiving the acknowledgement -- is acknowledged without being counted again. Packet ids are
        reused by the broker once acknowledged, so a match needs the same id *and* the same topic and payload.
        """
        if msg.mid and msg.dup and self._commits.delivered.get(msg.mid) == _digest(msg):
            self.counters.redelivered += 1
            self._ack(msg)
            return
        self.counters.received += 1
        if len(self._queue) >= self.spec.queue_size:
            if self.spec.overflow == "drop-oldest":
                dropped = self._queue.popleft()
                self.counters.dropped_overflow += 1
                self._ack(dropped)
            else:
                self._has_room.clear()
                while len(self._queue) >= self.spec.queue_size:
                    await self._has_room.wait()
                    self._has_room.clear()
        self._queue.append(msg)
        self._has_items.set()
        if len(self._queue) >= self._batch:
            self._full.set()
        self._idle.clear()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    @property
    def settled(self) -> bool:
        """Nothing queued, no window open, and no commit or acknowledgement in flight: every effect of what
        arrived so far is in the outbox. (Closed windows leave ``windows`` before their commit returns.)"""
        return not self._queue and not self._sent and len(self.windows) == 0 and self._commits.idle

    async def drain(self) -> None:
        """Stop waiting for new events; return once everything queued has been committed."""
        self._closing = True
        self._commits.hurry()
        if self._running:
            # Idle now is not enough: the final tick may still close windows, so wait for run() to end.
            self._idle.clear()
        self._has_items.set()
        self._full.set()
        await self._idle.wait()
        await self._commits.drain()

    async def aclose(self) -> None:
        """Stop committing and acknowledging (shutdown after the grace period, or a pipeline torn down): what is
        not committed stays unacknowledged, and the broker redelivers it."""
        await self._commits.aclose()

    async def retire(self) -> None:
        """The subscription is removed or replaced: drain, then emit every open window; the checkpoint keeps no
        window, only how far they were emitted (``WindowSet.seal``), for this revision's return."""
        await self.drain()
        closed = self.windows.seal()
        await self._outbox.commit(closed, {self._checkpoint_key: self.windows.snapshot()})
        self.counters.windows_closed += len(closed)

    # -- pipeline ------------------------------------------------------------------------------------
    async def run(self) -> None:
        self._running = True
        try:
            await self._run()
        except asyncio.CancelledError:
            # Cancelled (not drained): what is not committed stays unacknowledged, and the broker redelivers it.
            self._commits.cancel()
            raise
        finally:
            self._running = False
            self._idle.set()

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._sent:
                        await self._finish()
                        continue
                    if self._closing:
                        self._tick()
                        self._idle.set()
                        return
                    self._idle.set()
                    self._wake_for_close()
                    await self._has_items.wait()
                    self._has_items.clear()
                if not self._queue:
                    self._tick()
                    continue
                if self._sent and len(self._queue) < self._batch:
                    # No backlog: the batch in flight gets its results now, not after the next one's linger.
                    await self._finish()
                    continue
                await self._linger_for_more()
                in_flight = sum(len(sent.batch) for sent in self._sent)
                n = await self._commits.room(lambda: min(len(self._queue), self._batch), in_flight)
                batch = [self._queue.popleft() for _ in range(n)]
                self._has_room.set()
                # With a backlog, the next batch goes to the handler before this one's outcomes are applied: the
                # handler works on it meanwhile instead of waiting for us (docs/performance.md, "Two batches at
                # the handler").
                ahead = bool(self._sent) or len(self._queue) >= self._batch
                self._sent.append(self._send(batch, ahead))
                if len(self._sent) > 1 or not ahead:
                    await self._finish()
        finally:
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None
            for sent in self._sent:
                if isinstance(sent.outcomes, asyncio.Future):
                    sent.outcomes.cancel()
                elif sent.outcomes is not None:
                    sent.outcomes.close()
            self._sent.clear()

    async def _linger_for_more(self) -> None:
        """Let a short batch take in what the loop has already read (one loop turn), and with ``linger`` wait for
        more until its first event has waited that long since it arrived. At a paced rate the broker hands over
        a few events per read; batched, they share one handler round trip, one write of acknowledgements and one
        commit (docs/performance.md, "... batches of a paced stream"). A backlog does not linger: its first event
        has waited long enough already."""
        if self._closing or len(self._queue) >= self._batch:
            return
        await asyncio.sleep(0)
        if self._linger <= 0 or self._closing or len(self._queue) >= self._batch:
            return
        wait = min(self._linger, self._queue[0].arrived + self._linger - self._clock())
        if wait > 0:
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._full.wait()

    def _wake_for_close(self) -> None:
        """Have the idle wait end when the next window is due to close (an event wakes it earlier).

        One timer for the stream, kept while it is due no later than needed (a timer that wakes the loop early
        costs one more look at the windows): it is armed about once per window, not once per idle wait, which at a
        paced 5,000 events/s is a thousand times a second (``asyncio.timeout`` there cost a few percent of the
        agent's CPU)."""
        due = self.windows.next_close()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        # Not below 10 ms: a window that is due but held back by the intake watermark must not spin the loop.
        at = loop.time() + max(0.01, due - self._clock() + 0.001)
        timer = self._close_timer
        if timer is not None:
            if timer.when() <= at:
                return
            timer.cancel()
        self._close_timer = loop.call_at(at, self._close_due)

    def _close_due(self) -> None:
        self._close_timer = None
        self._has_items.set()

    def _watermark(self) -> float:
        """Time up to which every event has been seen: the clock, held back by the intake, by the batches at the
        handler and by our queue."""
        mark = min(self._clock(), self._intake_watermark())
        if self._sent:
            mark = min(mark, self._sent[0].batch[0].arrived)
        if self._queue:
            mark = min(mark, self._queue[0].arrived)
        return mark

    def _tick(self) -> None:
        """Close due windows on an idle stream."""
        closed = self.windows.close_due(self._watermark())
        if closed:
            self._commits.queue(AppliedBatch([], [], closed, []))

    def _send(self, batch: list[Incoming], ahead: bool) -> _Sent:
        """Decode ``batch`` for the handler; ``_finish`` awaits the outcomes and applies them. ``ahead``: the
        handler gets the events now, in a task of their own, not when ``_finish`` awaits them."""
        sent = _Sent(batch)
        events = sent.events
        for msg in batch:
            if len(msg.payload) > self._max_payload:
                sent.rejected.append((msg, "oversized", f"{len(msg.payload)} bytes > {self._max_payload}"))
                continue
            try:
                payload = orjson.loads(msg.payload)
            except orjson.JSONDecodeError as exc:
                sent.rejected.append((msg, "invalid-json", str(exc)))
                continue
            events.append((msg.topic, payload, self._event_time(payload, msg.arrived)))
            sent.sources.append((msg, payload))
        if events:
            keys = [self._key(t, p, {}) for t, p, _ in events] if self._key is not None else None
            now = self._clock()
            queued = [now - msg.arrived for msg, _ in sent.sources]
            call = self.runtime.process(events, keys, queued)
            sent.outcomes = asyncio.ensure_future(call) if ahead else call
        return sent

    async def _finish(self) -> None:
        """Apply the oldest batch in flight once its outcomes are in, close what is due, queue its commit."""
        sent = self._sent[0]
        outcomes = await sent.outcomes if sent.outcomes is not None else []
        self._sent.popleft()
        waits: list[Awaitable[None]] = []
        for msg, reason, detail in sent.rejected:
            self._deadletter(waits, msg, reason, detail)
        for (msg, payload), (topic, _p, ts), outcome in zip(sent.sources, sent.events, outcomes, strict=True):
            self._apply(waits, msg, topic, payload, ts, outcome)
        closed = self.windows.close_due(self._watermark())
        name = self._delivered_key
        delivered = [(name, msg.mid, _digest(msg)) for msg in sent.batch if msg.mid]
        self._commits.queue(AppliedBatch(sent.batch, waits, closed, delivered))

    def _apply(
        self, waits: list[Awaitable[None]], msg: Incoming, topic: str, payload: Any, ts: float, outcome: Outcome
    ) -> None:
        """One handler outcome: into its window (and its local publications out), or to the dead letters."""
        if isinstance(outcome, Failure):
            self._deadletter(waits, msg, outcome.reason, outcome.detail)
            return
        if outcome.kind == "error":
            self._deadletter(waits, msg, "handler-error", outcome.error)
            return
        values = numeric_values(outcome.values, self.spec.fields)
        group = self._group(topic, payload, outcome.values)
        if not self.windows.add(group, values, ts):
            self._deadletter(waits, msg, "late", f"event time {ts:.3f}: its window already closed")
            return
        self.counters.processed += 1
        for req in outcome.publish:
            pending = self._publish(req.topic, orjson.dumps(req.payload), req.qos, req.retain)
            self.counters.published += 1
            if pending is not None:
                waits.append(pending)

    def _event_time(self, payload: Any, arrived: float) -> float:
        name = self.spec.event_time_field
        if name and isinstance(payload, dict):
            value = payload.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        return arrived

    def _deadletter(
        self, waits: list[Awaitable[None]], msg: Incoming, reason: DeadLetterReason, detail: str
    ) -> None:
        self.counters.dead_lettered[reason] += 1
        record = DeadLetter.of(
            reason=reason,
            detail=detail,
            subscription=self.spec.name,
            handler=self.spec.handler,
            topic=msg.topic,
            payload=msg.payload,
            ts=wall_clock(),
        )
        pending = self._publish(self._dl_topic, record.model_dump_json().encode(), 1, False)
        if pending is not None:
            waits.append(pending)


@dataclass(slots=True)
class _Sent:
    """A batch handed to the handler: the events it was given (and where they came from), those rejected before
    it (oversized, not JSON), and the outcomes to come."""

    batch: list[Incoming]
    events: list[EventTuple] = field(default_factory=list)
    sources: list[tuple[Incoming, Any]] = field(default_factory=list)
    rejected: list[tuple[Incoming, DeadLetterReason, str]] = field(default_factory=list)
    outcomes: Coroutine[Any, Any, list[Outcome]] | asyncio.Future[list[Outcome]] | None = None


def _digest(msg: Incoming) -> bytes:
    return hashlib.blake2b(msg.topic.encode() + b"\0" + msg.payload, digest_size=8).digest()
