"""Group commit for ingest: what many messages write, in one transaction and one fsync.

Ingest checks each message on the event loop and queues its write here: an aggregates batch, a status, a
reported state. One task takes everything queued (up to ``max_group`` records) and applies it in a worker
thread in one transaction, while ingest goes on reading the next messages. A commit costs an fsync on SQLite
and a round trip on PostgreSQL, so per message that was most of the hub's time; per group it is shared by all
the group's messages, and a busier hub makes larger groups instead of a longer queue.

Each write gets a future: True once committed, False if it could not be (logged and counted; an unacked batch is
resent by its agent); a committed batch's ``refused`` then names the records the store refused as conflicts. If
a group's transaction fails, its writes are retried one by one, so one write the database refuses does not take
the others down with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from edge_protocol.messages import SequencedResult
from hub import metrics
from hub.db.store import Store
from hub.errors import StoreError
from hub.fleet.devices import Devices, DeviceSeen
from hub.fleet.registry import Fleet, ReportedState
from hub.ingest.aggregates import Aggregates

log = logging.getLogger(__name__)

MAX_GROUP = 5_000
"""Records per transaction: large enough to share an fsync widely, small enough to commit in about 0.1 s."""
MAX_QUEUED = 50_000
"""Records waiting for their group before ``put`` waits: ingest then stops reading from the broker."""


@dataclass(frozen=True, slots=True)
class BatchWrite:
    device: str
    records: Sequence[SequencedResult]
    refused: dict[int, str] = field(default_factory=dict, compare=False)
    """Filled once the batch is committed: seq -> reason of the records refused (conflicts), not stored."""


Write = BatchWrite | DeviceSeen | ReportedState
"""An aggregates batch, a status (a device seen, its online flag set) or a reported state."""


def _size(write: Write) -> int:
    return len(write.records) if isinstance(write, BatchWrite) else 1


def _operation(write: Write) -> str:
    """The ``operation`` label of the failure metric, as before group commit."""
    if isinstance(write, BatchWrite):
        return "store"
    return "status" if isinstance(write, DeviceSeen) else "reported"


@dataclass(slots=True)
class _Queued:
    write: Write
    done: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class WriteQueue:
    """Queued writes, committed in groups by :meth:`run`."""

    def __init__(
        self,
        store: Store,
        *,
        max_group: int = MAX_GROUP,
        max_queued: int = MAX_QUEUED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._aggregates = Aggregates(store)
        self._devices = Devices(store)
        self._fleet = Fleet(store)
        self._max_group = max_group
        self._max_queued = max_queued
        self._clock = clock
        self._queue: deque[_Queued] = deque()
        self._queued = 0  # records in _queue
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._closing = False

    @property
    def queued(self) -> int:
        """Records waiting for a transaction."""
        return self._queued

    async def put(self, write: Write) -> asyncio.Future[bool]:
        """Queue ``write`` (waiting while the queue is full); the future says whether it was committed."""
        while self._queued >= self._max_queued and not self._closing:
            self._has_room.clear()
            await self._has_room.wait()
        item = _Queued(write)
        if self._closing:
            item.done.set_result(False)
            return item.done
        self._queue.append(item)
        self._queued += _size(write)
        metrics.INGEST_QUEUED.set(self._queued)
        self._has_items.set()
        return item.done

    def close(self) -> None:
        """Take nothing more: :meth:`run` returns after the group in progress; what is still queued fails."""
        self._closing = True
        self._has_items.set()
        self._has_room.set()

    async def run(self) -> None:
        """Commit groups until :meth:`close`, which lets the group in progress finish and its futures resolve.

        Cancelled instead, a group being written is still committed by its thread, but its futures stay
        unresolved: those batches are not acked, and their agents resend them (stored once)."""
        while True:
            while not self._queue and not self._closing:
                self._has_items.clear()
                await self._has_items.wait()
            if self._closing:
                for item in self._queue:
                    item.done.set_result(False)
                self._queue.clear()
                return
            await self._commit_next_group()

    async def flush(self) -> None:
        """Commit everything queued now (for callers without :meth:`run`, such as tests; not beside it)."""
        while self._queue:
            await self._commit_next_group()

    async def _commit_next_group(self) -> None:
        group = self._take_group()
        results = await asyncio.to_thread(self._commit, [item.write for item in group])
        for item, ok in zip(group, results, strict=True):
            if not item.done.done():
                item.done.set_result(ok)
        metrics.INGEST_GROUP_RECORDS.observe(sum(_size(item.write) for item in group))

    def _take_group(self) -> list[_Queued]:
        group: list[_Queued] = []
        records = 0
        while self._queue and (not group or records + _size(self._queue[0].write) <= self._max_group):
            item = self._queue.popleft()
            group.append(item)
            records += _size(item.write)
        self._queued -= records
        metrics.INGEST_QUEUED.set(self._queued)
        self._has_room.set()
        return group

    # -- worker thread ---------------------------------------------------------------------------------------

    def _commit(self, writes: list[Write]) -> list[bool]:
        try:
            with self._store.transaction("ingest") as session:
                refused = self._apply(session, writes)
            _note_refused(refused)
            return [True] * len(writes)
        except StoreError as exc:
            if len(writes) == 1:
                self._failed(writes[0], exc)
                return [False]
            log.warning("a group of %d writes failed (%s); retrying them one by one", len(writes), exc)
        return [self._commit_one(write) for write in writes]

    def _commit_one(self, write: Write) -> bool:
        try:
            with self._store.transaction("ingest") as session:
                refused = self._apply(session, [write])
        except StoreError as exc:
            self._failed(write, exc)
            return False
        _note_refused(refused)
        return True

    def _apply(self, session: Session, writes: Sequence[Write]) -> list[tuple[BatchWrite, dict[int, str]]]:
        """Apply ``writes``; each batch with the records refused, to note once the transaction committed."""
        # Grouped by kind, each kind in arrival order: batches only move last_seen (which never moves back), so
        # only statuses among themselves (online) and reported states among themselves need their order.
        batch_writes = [w for w in writes if isinstance(w, BatchWrite)]
        refused: list[dict[int, str]] = []
        if batch_writes:
            refused = self._aggregates.insert_batches(
                session, [(w.device, w.records) for w in batch_writes], self._clock()
            )
        self._devices.touch(session, [w for w in writes if isinstance(w, DeviceSeen)])
        self._fleet.write_reported(session, [w for w in writes if isinstance(w, ReportedState)])
        return list(zip(batch_writes, refused, strict=True))

    @staticmethod
    def _failed(write: Write, exc: StoreError) -> None:
        metrics.FAILURES.labels(_operation(write)).inc()
        if isinstance(write, BatchWrite):
            log.error("device %s: %d records not stored (the agent resends): %s", write.device, len(write.records), exc)
        else:
            device = write.device if isinstance(write, DeviceSeen) else write.reported.device
            log.error("device %s: %s not stored: %s", device, _operation(write), exc)


def _note_refused(refused: list[tuple[BatchWrite, dict[int, str]]]) -> None:
    # Only after the commit: a group that failed and is retried write by write must not keep a stale answer.
    for write, seqs in refused:
        write.refused.clear()
        write.refused.update(seqs)
