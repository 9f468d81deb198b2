"""Re-signs each device's current desired state before it expires, so that only a device cut off from the hub
(or fed old documents by someone holding the broker) ever runs an expired one.

Every ``period`` (at most a quarter of the validity) the job reads each device's newest version and re-signs
those with less than half of ``validity`` left, or no expiry at all (signed before expiry was configured): the
same version and content, a new ``issued_at`` and ``expires_at``. Agents take a same-version document with a
later expiry as a renewal and touch no handler (``edge_agent.desired_checks``); keeping the version keeps
versions meaning content, so rollouts and ``applied/desired`` are not disturbed by renewals.

The row is rewritten in place only if its envelope is still the one read (compare and set), so two replicas
renewing at once make one renewal, and a version compiled meanwhile is left alone. The row is then marked
unpublished and the publisher woken: it publishes the renewal, retained, like any new version.

Cost: one read of every device's newest document per period (``KEEP_VERSIONS`` older ones are not read).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select, update

from edge_protocol.desired import DesiredDocument, SignedDesired
from hub import metrics
from hub.db.tables import DesiredRow
from hub.desired.documents import DesiredStore
from hub.errors import StoreError

log = logging.getLogger(__name__)

MAX_PERIOD = 600.0
"""The job looks at least this often (and at least four times per validity)."""


@dataclass(frozen=True, slots=True)
class Renewed:
    device: str
    version: int
    expires_at: float


class Renewal:
    """The re-signing job of one hub replica; ``run()`` until cancelled."""

    def __init__(self, desired: DesiredStore, *, wake: Callable[[], None] = lambda: None) -> None:
        if desired.validity <= 0:
            raise ValueError("no renewal without a validity: documents are signed without expiry")
        self.desired = desired
        self._wake = wake
        self.period = min(MAX_PERIOD, desired.validity / 4)

    def due(self) -> list[tuple[str, int, str]]:
        """(device, version, envelope) of every newest version with less than half its validity left."""
        now = self.desired.clock()
        latest = (
            select(DesiredRow.device, func.max(DesiredRow.version).label("version"))
            .group_by(DesiredRow.device)
            .subquery()
        )
        stmt = (
            select(DesiredRow.device, DesiredRow.version, DesiredRow.document, DesiredRow.envelope)
            .join(latest, (latest.c.device == DesiredRow.device) & (latest.c.version == DesiredRow.version))
            .order_by(DesiredRow.device)
        )
        with self.desired.store.transaction("list desired state to renew") as session:
            rows = session.execute(stmt).all()
        out = []
        for device, version, document, envelope in rows:
            expires_at = json.loads(document).get("expires_at")
            if expires_at is None or expires_at - now < self.desired.validity / 2:
                out.append((device, version, envelope))
        return out

    def renew_due(self) -> list[Renewed]:
        """Re-sign every document that is due; the renewals made (another replica's are not counted)."""
        out = []
        for device, version, envelope in self.due():
            renewed = self._renew(device, version, envelope)
            if renewed is not None:
                out.append(renewed)
        return out

    def _renew(self, device: str, version: int, envelope: str) -> Renewed | None:
        old = DesiredDocument.model_validate_json(SignedDesired.model_validate_json(envelope).document)
        now = self.desired.clock()
        signed = self.desired.sign(old, now)
        with self.desired.store.transaction("renew desired state") as session:
            result = session.execute(
                update(DesiredRow)
                .where(DesiredRow.device == device, DesiredRow.version == version, DesiredRow.envelope == envelope)
                .values(document=signed.document, envelope=signed.model_dump_json(), published_at=None)
            )
            if getattr(result, "rowcount", 0) != 1:
                return None  # another replica renewed it, or the row is gone
        expires_at = now + self.desired.validity
        return Renewed(device, version, expires_at)

    async def run(self) -> None:
        """Renew what is due now and every ``period``, waking the publisher after each renewal, until cancelled."""
        while True:
            try:
                renewed = await asyncio.to_thread(self.renew_due)
            except StoreError as exc:
                metrics.FAILURES.labels("desired-renewal").inc()
                log.warning("desired state not renewed yet (retrying in %.0fs): %s", self.period, exc)
            else:
                if renewed:
                    metrics.DESIRED_RENEWED.inc(len(renewed))
                    log.info("desired state renewed: %s", ", ".join(f"{r.device} v{r.version}" for r in renewed))
                    self._wake()
            await asyncio.sleep(self.period)
