"""Matching a handler's replies to the events and pings they answer.

Every request carries an id; a reply names it. Replies come back in order, so a line that does not parse, or
names no waiting id, is charged to the oldest event still waiting. Ids keep counting across containers, so a
late reply from a replaced container can never be taken for a new event's.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from edge_agent.runtime.base import EventTuple, Failure, Outcome
from edge_protocol.deadletter import DeadLetterReason
from edge_protocol.handler_io import ReplyError, decode_reply, encode_event, encode_ping

LineVerdict = Literal["ignored", "answered", "poisoned"]
"""What one line did: nothing for a waiting event; gave one its outcome; or, an overlong line, gave the oldest
its failure and left the stream untrustworthy (whatever the handler writes next may be the line's rest)."""


class PendingReplies:
    """The batch in flight (one outcome slot per event) and the pings waiting for their pong."""

    def __init__(self, max_line: int) -> None:
        self._max_line = max_line
        self._next_id = 1
        self._pending: dict[int, int] = {}
        """request id -> slot of the event it carries"""
        self._order: list[int] = []
        self.outcomes: list[Outcome | None] = []
        self.progress = asyncio.Event()
        """Set whenever a waiting event got its outcome (or the stream ended: see ``wake``)."""
        self._pongs: dict[int, asyncio.Future[Any]] = {}
        self.invalid_lines = 0
        self.hung = False
        """No waiting event was answered within the timeout given to ``watch``; ``progress`` was set."""
        self._timeout = 0.0
        self._last_progress = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- batches -------------------------------------------------------------------------------------
    def begin(self, count: int) -> None:
        self.outcomes = [None] * count

    def finish(self) -> list[Outcome]:
        """The batch's outcomes, a Failure for any slot left without one."""
        outcomes, self.outcomes = self.outcomes, []
        return [o if o is not None else Failure("handler-unavailable", "no outcome") for o in outcomes]

    def requests(self, events: list[EventTuple], slots: list[int]) -> bytes:
        """The request lines for events ``slots``, now waiting; one that cannot be encoded gets its Failure."""
        self._pending.clear()
        self._order = []
        parts = []
        for slot in slots:
            topic, payload, ts = events[slot]
            try:
                line = encode_event(self._next_id, topic, payload, ts)
            except TypeError as exc:
                # orjson reads deeper nesting than it writes: such a payload cannot reach the handler.
                self.outcomes[slot] = Failure("invalid-json", f"cannot be passed to the handler: {exc}")
                continue
            self._pending[self._next_id] = slot
            self._order.append(self._next_id)
            self._next_id += 1
            parts.append(line)
        return b"".join(parts)

    @property
    def waiting(self) -> bool:
        return bool(self._pending)

    def take_waiting(self) -> list[int]:
        """The slots still waiting, oldest first; none waits any more."""
        waiting = [self._pending[i] for i in self._order if i in self._pending]
        self._pending.clear()
        return waiting

    def charge_oldest(self, reason: DeadLetterReason, detail: str) -> list[int]:
        """The oldest waiting event caused the exit or hang: give it the failure; the others, to retry."""
        waiting = self.take_waiting()
        if not waiting:
            return []
        self.outcomes[waiting[0]] = Failure(reason, detail)
        return waiting[1:]

    def watch(self, timeout: float) -> None:
        """The events just sent must be answered within ``timeout`` of each other: when none of those waiting is
        answered for that long, ``hung`` is set and ``progress`` wakes the waiter.

        One timer serves all batches: it is armed when none runs and, when it fires early (there was progress),
        moved to the new deadline. Arming and cancelling a timer per batch (``asyncio.timeout``) cost a few
        percent of the agent's CPU at a paced 5,000 events/s, where a batch is a handful of events."""
        self._loop = loop = asyncio.get_running_loop()
        self.hung = False
        self._timeout = timeout
        self._last_progress = loop.time()
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._last_progress + timeout, self._check_hung)

    def _check_hung(self) -> None:
        self._watchdog = None
        if not self._pending or self._loop is None:
            return
        due = self._last_progress + self._timeout
        if self._loop.time() < due:
            self._watchdog = self._loop.call_at(due, self._check_hung)
            return
        self.hung = True
        self.progress.set()

    def stop_watching(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def wake(self) -> None:
        """The stream ended: whoever waits for progress looks at why."""
        self.progress.set()

    # -- pings ---------------------------------------------------------------------------------------
    def new_ping(self) -> tuple[bytes, int, asyncio.Future[Any]]:
        """A ping line, its id, and the future its pong resolves (the caller removes it with ``drop_ping``)."""
        pid = self._next_id
        self._next_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pongs[pid] = fut
        return encode_ping(pid), pid, fut

    def drop_ping(self, pid: int) -> None:
        self._pongs.pop(pid, None)

    # -- replies -------------------------------------------------------------------------------------
    def on_line(self, line: bytes) -> LineVerdict:
        """One protocol line from the handler; ``b""`` stands for a line longer than ``max_line``."""
        if not line.strip() and line:
            return "ignored"
        try:
            reply = decode_reply(line) if line else None
        except ReplyError as exc:
            reply = None
            reason = str(exc)
        else:
            reason = f"line longer than {self._max_line} bytes"
        if reply is not None and reply.kind == "pong":
            fut = self._pongs.pop(reply.id or 0, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return "ignored"
        if reply is not None and reply.id in self._pending:
            self.outcomes[self._pending.pop(reply.id)] = reply
            self._answered()
            return "answered"
        self.invalid_lines += 1
        oldest = next((i for i in self._order if i in self._pending), None)
        if oldest is None:
            return "ignored"
        # Replies arrive in order: an unreadable or unattributable line belongs to the oldest waiter.
        if reply is not None:
            reason = f"reply for unknown id {reply.id}"
        self.outcomes[self._pending.pop(oldest)] = Failure("handler-invalid-reply", reason)
        self._answered()
        return "answered" if line else "poisoned"

    def _answered(self) -> None:
        if self._loop is not None:
            self._last_progress = self._loop.time()
        self.progress.set()
