"""One subscription's pipeline: queue -> handler -> windows -> outbox, with dead letters for every reject.

An event is acknowledged to the local broker only after the commit that contains its effect (closed windows
and the checkpoint of open ones) and its dead letter or local publications are durable.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from edge_agent.aggregation.groups import group_key
from edge_agent.aggregation.windows import WindowSet, numeric_values
from edge_agent.broker import Incoming
from edge_agent.counters import SubscriptionCounters
from edge_agent.outbox import Outbox
from edge_agent.runtime.base import EventTuple, Failure, HandlerRuntime
from edge_protocol.deadletter import DeadLetter, DeadLetterReason
from edge_protocol.specs import SubscriptionSpec

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], Awaitable[None] | None]
Ack = Callable[[Incoming], None]


class Dispatcher:
    """Feeds one subscription's events to its handler in batches and aggregates the results."""

    def __init__(
        self,
        spec: SubscriptionSpec,
        *,
        runtime: HandlerRuntime,
        windows: WindowSet,
        outbox: Outbox,
        publish: Publish,
        ack: Ack,
        deadletter_topic: str,
        max_payload: int,
        batch_size: int = 500,
        clock: Callable[[], float] = time.time,
        intake_watermark: Callable[[], float] | None = None,
    ) -> None:
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
        self._clock = clock
        self._intake_watermark = intake_watermark or clock
        self._group = group_key(spec.group_by)
        self._queue: collections.deque[Incoming] = collections.deque()
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    # -- intake side ---------------------------------------------------------------------------------
    async def put(self, msg: Incoming) -> None:
        """Queue one event; under ``block`` waits for room, under ``drop-oldest`` drops (and counts) one."""
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
        self._idle.clear()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    async def drain(self) -> None:
        """Stop waiting for new events; return once everything queued has been committed."""
        self._closing = True
        self._has_items.set()
        await self._idle.wait()

    # -- pipeline ------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    await self._tick()
                    self._idle.set()
                    return
                self._idle.set()
                timeout = self._until_next_close()
                try:
                    async with asyncio.timeout(timeout):
                        await self._has_items.wait()
                except TimeoutError:
                    pass
                self._has_items.clear()
            if not self._queue:
                await self._tick()
                continue
            n = min(len(self._queue), self._batch)
            batch = [self._queue.popleft() for _ in range(n)]
            self._has_room.set()
            await self._process(batch)

    def _until_next_close(self) -> float | None:
        due = self.windows.next_close()
        if due is None:
            return None
        # Not below 10 ms: a window that is due but held back by the intake watermark must not spin the loop.
        return max(0.01, due - self._clock() + 0.001)

    def _watermark(self) -> float:
        """Time up to which every event has been seen: the clock, held back by the intake and by our queue."""
        mark = min(self._clock(), self._intake_watermark())
        if self._queue:
            mark = min(mark, self._queue[0].arrived)
        return mark

    async def _tick(self) -> None:
        """Close due windows on an idle stream."""
        closed = self.windows.close_due(self._watermark())
        if closed:
            await self._outbox.commit(closed, {self.spec.name: self.windows.snapshot()})
            self.counters.windows_closed += len(closed)

    async def _process(self, batch: list[Incoming]) -> None:
        waits: list[Awaitable[None]] = []
        events: list[EventTuple] = []
        sources: list[tuple[Incoming, Any]] = []
        for msg in batch:
            if len(msg.payload) > self._max_payload:
                self._deadletter(waits, msg, "oversized", f"{len(msg.payload)} bytes > {self._max_payload}")
                continue
            try:
                payload = orjson.loads(msg.payload)
            except orjson.JSONDecodeError as exc:
                self._deadletter(waits, msg, "invalid-json", str(exc))
                continue
            events.append((msg.topic, payload, self._event_time(payload, msg.arrived)))
            sources.append((msg, payload))
        outcomes = await self.runtime.process(events) if events else []
        for (msg, payload), (topic, _p, ts), outcome in zip(sources, events, outcomes, strict=True):
            if isinstance(outcome, Failure):
                self._deadletter(waits, msg, outcome.reason, outcome.detail)  # type: ignore[arg-type]
            elif outcome.kind == "error":
                self._deadletter(waits, msg, "handler-error", outcome.error)
            else:
                values = numeric_values(outcome.values, self.spec.fields)
                group = self._group(topic, payload, outcome.values)
                if not self.windows.add(group, values, ts):
                    self._deadletter(waits, msg, "late", f"event time {ts:.3f}: its window already closed")
                    continue
                self.counters.processed += 1
                for req in outcome.publish:
                    pending = self._publish(req.topic, orjson.dumps(req.payload), req.qos, req.retain)
                    self.counters.published += 1
                    if pending is not None:
                        waits.append(pending)
        closed = self.windows.close_due(self._watermark())
        await self._outbox.commit(closed, {self.spec.name: self.windows.snapshot()})
        self.counters.windows_closed += len(closed)
        if waits:
            await asyncio.gather(*waits)
        for msg in batch:
            self._ack(msg)

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
            ts=self._clock(),
        )
        pending = self._publish(self._dl_topic, record.model_dump_json().encode(), 1, False)
        if pending is not None:
            waits.append(pending)
