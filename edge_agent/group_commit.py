"""Group commit of one subscription's batches, beside its pipeline, and the acknowledgements that follow.

The next batch goes to the handler while the previous ones are committed, and every batch that finished
meanwhile shares the next transaction, at most one every ``interval``. A slow commit (a WAL checkpoint's fsync
takes ~10 ms on this machine's disk, more on an SD card) then delays acknowledgements, not results, and a busy
stream costs fewer transactions, not more. An event is acknowledged only after the commit that contains its
effect, and after its dead letter or local publications are confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.broker import Incoming
from edge_agent.counters import SubscriptionCounters
from edge_agent.errors import BrokerError, OutboxError
from edge_protocol.aggregate import WindowResult

log = logging.getLogger(__name__)

Ack = Callable[[Incoming], None]


class WindowCommits(Protocol):
    """Where a subscription's windows are committed: the agent's :class:`edge_agent.outbox.Outbox`, or in an
    intake worker, the agent's outbox over the worker's pipe (:mod:`edge_agent.workers.child`)."""

    async def commit(
        self,
        results: list[WindowResult],
        checkpoints: dict[str, dict[str, Any] | None],
        delivered: list[tuple[str, int, bytes]] | None = None,
    ) -> int: ...


@dataclass(slots=True)
class AppliedBatch:
    """A batch whose effect is in the windows, waiting for its commit: its events, the confirmations of its
    dead letters and local publications, the windows it closed and its packet ids."""

    batch: list[Incoming]
    waits: list[Awaitable[None]]
    closed: list[WindowResult]
    delivered: list[tuple[str, int, bytes]]


class GroupCommitter:
    """Commits the batches queued with ``queue`` in groups, oldest first, then acknowledges their events."""

    def __init__(
        self,
        *,
        name: str,
        outbox: WindowCommits,
        checkpoint_key: str,
        checkpoint: Callable[[], dict[str, Any]],
        counters: SubscriptionCounters,
        ack: Ack,
        alarm: Callable[[str, bool], None],
        batch_size: int,
        interval: float,
        delivered: dict[int, bytes] | None = None,
    ) -> None:
        self._name = name
        self._outbox = outbox
        self._checkpoint_key = checkpoint_key
        self._checkpoint = checkpoint
        self._counters = counters
        self._ack = ack
        self._alarm = alarm
        # Batches whose local publications still wait for their PUBACK: acknowledged when those come, while the
        # next batch already goes to the handler. Bounded, so a broker that stops confirming stops the intake.
        self._finishing: set[asyncio.Task[None]] = set()
        self._finish_room = asyncio.Semaphore(16)
        # Batches whose effect is applied to the windows but not yet committed, oldest first, and the task that
        # commits them. Bounded in events (with those still at the handler, which will be), so a disk that stops
        # taking commits stops the pipeline: room for one batch being committed and two at the handler.
        self._uncommitted: list[AppliedBatch] = []
        self._uncommitted_events = 0
        self._max_uncommitted = 3 * batch_size
        self._task: asyncio.Task[None] | None = None
        self._interval = interval
        self._last_commit = -math.inf
        self._committed = asyncio.Event()
        self._committing = 0
        self._hurry = False
        self.delivered: dict[int, bytes] = delivered if delivered is not None else {}
        """Packet id -> digest of the event whose effect is committed under it."""

    @property
    def idle(self) -> bool:
        """No batch waits for its commit, none is being committed, and no acknowledgement is in flight."""
        return not self._uncommitted and self._committing == 0 and not self._finishing

    def hurry(self) -> None:
        """From now on, commit without waiting out the interval (the subscription is draining)."""
        self._hurry = True

    def queue(self, applied: AppliedBatch) -> None:
        """Queue a batch whose effect is in the windows. Called in the same loop turn as that effect is applied,
        so a checkpoint taken at any await point holds exactly the batches queued so far."""
        self._uncommitted.append(applied)
        self._uncommitted_events += len(applied.batch)
        if self._task is None or self._task.done():
            self.raise_failure()
            self._task = asyncio.create_task(self._commit_queued(), name=f"agent.commit[{self._name}]")

    def raise_failure(self) -> None:
        """A committer that died of anything but OutboxError (which it retries) is a bug: fail the pipeline
        with it, as an inline commit would have, instead of leaving its events unacknowledged in silence."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    async def room(self, size: Callable[[], int], ahead: int = 0) -> int:
        """``size()`` (the next batch's size, asked again after every wait) once it fits within the bound on
        uncommitted events, beside ``ahead`` events sent to the handler and not applied yet."""
        while self._uncommitted_events + ahead + (n := size()) > self._max_uncommitted:
            self.raise_failure()
            self._committed.clear()
            await self._committed.wait()
        return n

    async def drain(self) -> None:
        """Return once everything queued is committed and acknowledged."""
        if self._task is not None:
            # wait() and not await: a committer cancelled with the pipeline must not cancel the caller.
            await asyncio.wait([self._task])
            self.raise_failure()
        if self._finishing:
            await asyncio.gather(*self._finishing)

    def cancel(self) -> None:
        """Stop committing (the pipeline was cancelled): what is not committed stays unacknowledged."""
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop committing and acknowledging; return once the tasks have ended."""
        tasks = [t for t in (self._task, *self._finishing) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _commit_queued(self) -> None:
        """Commit everything queued, in groups, oldest first; then acknowledge the groups' events."""
        try:
            while self._uncommitted:
                loop = asyncio.get_running_loop()
                wait = self._last_commit + self._interval - loop.time()
                if wait > 0 and not self._hurry:
                    await asyncio.sleep(wait)
                self._last_commit = loop.time()
                group, self._uncommitted = self._uncommitted, []
                closed = [w for a in group for w in a.closed]
                delivered = [d for a in group for d in a.delivered]
                await self._commit(closed, delivered, self._checkpoint())
                for _, mid, digest in delivered:
                    self.delivered[mid] = digest
                self._counters.windows_closed += len(closed)
                self._uncommitted_events -= sum(len(a.batch) for a in group)
                self._committed.set()
                for a in group:
                    await self._acknowledge(a.batch, a.waits)
        finally:
            self._committed.set()

    async def _commit(
        self, closed: list[WindowResult], delivered: list[tuple[str, int, bytes]], checkpoint: dict[str, Any]
    ) -> None:
        """Commit, retrying until the disk takes it: the batch's events stay unacknowledged meanwhile, so
        intake stalls (the backlog waits in the broker session) and nothing is lost or counted twice."""
        delay = 0.5
        self._committing += 1
        try:
            while True:
                try:
                    await self._outbox.commit(closed, {self._checkpoint_key: checkpoint}, delivered)
                except OutboxError as exc:
                    self._alarm("outbox-write-failed", True)
                    log.error("subscription %s: commit failed (%s); retrying in %.1fs", self._name, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                if delay > 0.5:
                    self._alarm("outbox-write-failed", False)
                return
        finally:
            self._committing -= 1

    async def _acknowledge(self, batch: list[Incoming], waits: list[Awaitable[None]]) -> None:
        if not waits:
            for msg in batch:
                self._ack(msg)
            return
        await self._finish_room.acquire()
        task = asyncio.create_task(self._finish(waits, batch), name=f"agent.finish[{self._name}]")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, waits: list[Awaitable[None]], batch: list[Incoming]) -> None:
        """Acknowledge ``batch`` once its dead letters and local publications are confirmed."""
        try:
            await asyncio.gather(*waits)
        except BrokerError as exc:
            # The agent is closing: the events stay unacknowledged, and the broker redelivers them to the next run.
            log.info("subscription %s: %d events left unacknowledged: %s", self._name, len(batch), exc)
            return
        else:
            for msg in batch:
                self._ack(msg)
        finally:
            self._finish_room.release()
