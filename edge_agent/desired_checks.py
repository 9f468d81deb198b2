"""What the reconciler decides about a verified desired-state document before it acts: versions, expiry, renewals.

A verified document (signature and addressee checked) is, against the one the agent runs:

- older: refused, ``stale-version``;
- the same version with no later expiry (the retained message on every reconnection): a silent no-op, even
  once expired, so a replayed message is not counted as an attack every time the link comes back;
- the same version with a later ``expires_at`` (the hub re-signs the current document before it expires): a
  renewal when the content is the same -- stored and run on without touching handlers -- and ``version-reused``
  when it is not (the hub never signs two contents under one version);
- newer: applied.

Whatever would change something is refused when expired (``expired``, with ``tolerance`` for the device's
clock) or, with ``require_expiry``, when it carries no expiry (``no-expiry``). The document the agent runs is
never stopped for expiring: a device cut off from the hub keeps working, and raises the ``desired-expired``
alarm until a renewal or a newer version arrives. Refusals are counted by reason here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

from edge_protocol.desired import DesiredDocument, DesiredRefused, check_expiry

EXPIRED_ALARM = "desired-expired"
MAX_NAP = 60.0
"""The watch looks at the wall clock at least this often, so a clock that jumps is noticed within it."""

Verdict = Literal["apply", "renew", "same"]


class DesiredChecks:
    """The document the agent runs, its expiry alarm, and the refusal counters by reason."""

    def __init__(
        self,
        *,
        tolerance: float = 0.0,
        require_expiry: bool = False,
        alarm: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tolerance = tolerance
        self.require_expiry = require_expiry
        self._alarm = alarm or (lambda _name, _on: None)
        self._clock = clock
        self.running: DesiredDocument | None = None
        self.expired = False
        self.refusals: dict[str, int] = {}

    def judge(self, document: DesiredDocument) -> Verdict:
        """What to do with ``document``; :class:`DesiredRefused` when it must not be acted on."""
        running = self.running
        if running is not None:
            if document.version < running.version:
                raise DesiredRefused("stale-version", f"version {document.version} < applied {running.version}")
            if document.version == running.version:
                if not _later(document, running):
                    return "same"
                if document.content_hash() != running.content_hash():
                    raise DesiredRefused(
                        "version-reused", f"version {document.version} signed again with other content"
                    )
                self._check(document)
                return "renew"
        self._check(document)
        return "apply"

    def _check(self, document: DesiredDocument) -> None:
        check_expiry(document, self._clock(), self.tolerance, require_expiry=self.require_expiry)

    def count(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def run(self, document: DesiredDocument) -> bool:
        """``document`` is what the agent runs now (applied, renewed or loaded); whether it has expired."""
        self.running = document
        return self.check()

    def check(self) -> bool:
        """Raise or clear the expiry alarm for the running document by the clock now; True while expired."""
        doc = self.running
        self.expired = doc is not None and doc.expired(self._clock(), self.tolerance)
        self._alarm(EXPIRED_ALARM, self.expired)
        return self.expired

    def seconds_left(self) -> float | None:
        """Seconds until the running document counts as expired; None when it never does (or nothing runs)."""
        doc = self.running
        if doc is None or doc.expires_at is None:
            return None
        return doc.expires_at + self.tolerance - self._clock()

    async def watch(self, on_change: Callable[[], None]) -> None:
        """Raise the alarm when the running document expires (``on_change`` on every flip), until cancelled."""
        while True:
            before = self.expired
            if self.check() != before:
                on_change()
            left = self.seconds_left()
            nap = MAX_NAP if left is None or left < 0 else min(max(left, 0.05), MAX_NAP)
            await asyncio.sleep(nap)


def _later(document: DesiredDocument, running: DesiredDocument) -> bool:
    """``document`` expires later than ``running`` (an expiry is earlier than none, and so never later)."""
    if document.expires_at is None:
        return False
    return running.expires_at is None or document.expires_at > running.expires_at
