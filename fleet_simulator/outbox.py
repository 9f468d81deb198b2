"""A virtual device's outbox: closed windows waiting for the hub's ack, sent as the agent's uplink sends them.

Sequences start at 1 and follow window closes; records go out oldest first in batches of at most ``batch``
while fewer than ``max_unacked`` are unacknowledged; a record leaves only when an ``Ack`` names its sequence;
when the oldest unacknowledged send is ``resend_after`` old, or the connection was lost, every unacknowledged
record is sent again. Records are not stored: a window is kept as (first seq, template, start, groups) and
its records are rendered again for each send. Pure: times are passed in.

Every window closed is also kept in a :class:`Ledger` (eight bytes a window), so that a test can name each
record the device ever made, acknowledged or not, and compare them with what the hub stored.
"""

from __future__ import annotations

import bisect
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fleet_simulator.messages import RecordTemplate


@dataclass(frozen=True, slots=True)
class Block:
    """One closed window: records ``first`` .. ``first + groups - 1``, one per group."""

    first: int
    template: RecordTemplate
    window_start: float
    groups: int

    @property
    def last(self) -> int:
        return self.first + self.groups - 1


@dataclass(slots=True)
class _Run:
    """Windows closed one after another with the same template and groups: sequences from ``first`` on."""

    first: int
    template: RecordTemplate
    groups: int
    starts: array[float] = field(default_factory=lambda: array("d"))


class Ledger:
    """Every window a device closed, in order: what its records are, by sequence, long after their ack."""

    def __init__(self) -> None:
        self._runs: list[_Run] = []

    def add(self, first: int, template: RecordTemplate, window_start: float, groups: int) -> None:
        run = self._runs[-1] if self._runs else None
        if run is None or run.template is not template or run.groups != groups:
            run = _Run(first, template, groups)
            self._runs.append(run)
        run.starts.append(window_start)

    def records(self, through: int | None = None) -> Iterator[tuple[int, str, int]]:
        """(seq, window id, events) of every record up to sequence ``through`` (all without it), in order."""
        for run in self._runs:
            for k, start in enumerate(run.starts):
                for group in range(run.groups):
                    seq = run.first + k * run.groups + group
                    if through is not None and seq > through:
                        return
                    yield seq, run.template.window_id(group, start), run.template.events


class SimOutbox:
    def __init__(self, *, batch: int = 200, max_unacked: int = 2000, resend_after: float = 15.0) -> None:
        self.batch = batch
        self.max_unacked = max_unacked
        self.resend_after = resend_after
        self.next_seq = 1
        self.sent_through = 0
        """Highest sequence sent at least once."""
        self.unacked: dict[int, float] = {}
        """Sequence -> time of its last send, oldest send first."""
        self._resend: deque[int] = deque()
        self._blocks: list[Block] = []
        self._firsts: list[int] = []
        self.acked = 0
        self.resent = 0
        self.ledger = Ledger()

    @property
    def generated(self) -> int:
        return self.next_seq - 1

    @property
    def pending(self) -> int:
        """Records not yet acknowledged (sent or not)."""
        return self.generated - self.acked

    @property
    def acked_through(self) -> int:
        """The highest sequence up to which every record is acknowledged."""
        return min(self.unacked, default=self.sent_through + 1) - 1

    def add_window(self, template: RecordTemplate, window_start: float, groups: int) -> None:
        self.ledger.add(self.next_seq, template, window_start, groups)
        self._blocks.append(Block(self.next_seq, template, window_start, groups))
        self._firsts.append(self.next_seq)
        self.next_seq += groups
        self._trim()

    def take(self) -> tuple[list[int], bool]:
        """The next batch's sequences (resends first) and whether they are sent for the first time."""
        again: list[int] = []
        while self._resend and len(again) < self.batch:
            seq = self._resend.popleft()
            if seq in self.unacked:  # not acked since it was queued
                again.append(seq)
        if again:
            return again, False
        room = min(self.batch, self.max_unacked - len(self.unacked), self.generated - self.sent_through)
        if room <= 0:
            return [], True
        return list(range(self.sent_through + 1, self.sent_through + 1 + room)), True

    def sent(self, seqs: Iterable[int], now: float) -> None:
        for seq in seqs:
            self.unacked.pop(seq, None)
            self.unacked[seq] = now
            self.sent_through = max(self.sent_through, seq)

    def ack(self, ranges: Iterable[tuple[int, int]], now: float) -> list[float]:
        """Forget the acknowledged records; the time since each one's last send."""
        waited = []
        for lo, hi in ranges:
            seqs = range(lo, hi + 1) if hi - lo < len(self.unacked) else [s for s in self.unacked if lo <= s <= hi]
            for seq in seqs:
                at = self.unacked.pop(seq, None)
                if at is not None:
                    waited.append(now - at)
        self.acked += len(waited)
        return waited

    def requeue(self) -> int:
        """Send every unacknowledged record again (connection lost, or no ack in time); how many."""
        queued = set(self._resend)
        again = [seq for seq in self.unacked if seq not in queued]
        self._resend.extend(again)
        self.resent += len(again)
        return len(again)

    def resend_due_in(self, now: float) -> float | None:
        """Seconds until the oldest unacknowledged send is due again (<= 0: now); None when nothing waits."""
        if self._resend or not self.unacked:
            return None
        return next(iter(self.unacked.values())) + self.resend_after - now

    def _block(self, seq: int) -> Block:
        return self._blocks[bisect.bisect_right(self._firsts, seq) - 1]

    def render(self, seqs: Iterable[int]) -> list[bytes]:
        out = []
        for seq in seqs:
            block = self._block(seq)
            out.append(block.template.render(seq, seq - block.first, block.window_start))
        return out

    def window_ids(self, seqs: Iterable[int]) -> list[str]:
        out = []
        for seq in seqs:
            block = self._block(seq)
            out.append(block.template.window_id(seq - block.first, block.window_start))
        return out

    def _trim(self) -> None:
        """Drop the leading windows every record of which is acknowledged."""
        live = [self.sent_through + 1]
        if self.unacked:
            live.append(min(self.unacked))
        if self._resend:
            live.append(min(self._resend))
        lowest = min(live)
        drop = 0
        while drop < len(self._blocks) - 1 and self._blocks[drop].last < lowest:
            drop += 1
        if drop:
            del self._blocks[:drop], self._firsts[:drop]
