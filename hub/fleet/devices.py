"""The devices table: which devices the hub has heard from, when, their online flag, version and labels.

Its writes are here: ingest marks devices seen through :meth:`Devices.touch`, provisioning registers them, the
API sets labels. The fleet registry (:mod:`hub.fleet.registry`) and the desired-state compiler join this table
with their own in their queries.

Every hub replica receives every status (a plain subscription, so a restarted replica gets the retained ones),
and batches and reported states mark their device seen: a touch writes the row only when it changes something
a reader can see -- the online flag, the agent version, or ``first_seen`` earlier or ``last_seen`` later by
more than :data:`LAST_SEEN_RESOLUTION`. The same status applied by a second replica therefore writes nothing
(docs/decisions.md, "statuses and reported states on several replicas").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, or_, select
from sqlalchemy.orm import Session

from hub import metrics
from hub.db.store import Store, greatest, least
from hub.db.tables import DeviceRow
from hub.fleet.labels import Selector

LAST_SEEN_RESOLUTION = 1.0
"""Seconds: ``last_seen`` (``first_seen``) moves only when a device was heard of this much later (earlier) than
it says, or when anything else changes. Each replica stamps a live message with its own clock, so without it
every replica would write every status and every batch's touch again, a few milliseconds later."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the hub knows about one device."""

    id: str
    first_seen: float
    last_seen: float
    online: bool
    agent_version: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    """A device heard from: by a batch (``online`` None), a status (``online`` set) or a reported state."""

    device: str
    seen_at: float
    online: bool | None = None
    """None leaves a known device's flag alone (a new one starts online)."""
    agent_version: str = ""
    """Empty leaves the known version alone."""


@dataclass(frozen=True, slots=True)
class _Upserts:
    """The upserts of :meth:`Devices.touch`, built once: executemany reuses their compiled form."""

    seen: Any
    status: Any


class Devices:
    """Devices seen, their status and labels."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._upserts: _Upserts | None = None

    def record_status(self, device: str, *, online: bool, agent_version: str, seen_at: float) -> None:
        """Apply a status message: online/offline, agent version, and ``last_seen`` (never moves back)."""
        with self._store.transaction("record_status") as session:
            self.touch(session, [DeviceSeen(device, seen_at, online, agent_version)])

    def touch(self, session: Session, seen: Sequence[DeviceSeen]) -> int:
        """Upsert devices as seen, in order: ``last_seen`` never moves back, ``first_seen`` never forward.

        One statement per device, so two hub replicas seeing the same new device cannot collide; executemany
        of statements built once (building one per message was a tenth of ingest's CPU). A row is written only
        when something changes (module docstring). Returns the rows written (inserted or updated).
        """
        upserts = self._prepared()
        connection = session.connection()
        written = 0
        for online_known, statement in ((False, upserts.seen), (True, upserts.status)):
            rows = _merged([s for s in seen if (s.online is not None) == online_known])
            if rows:
                # RETURNING counts them: an executemany's rowcount is -1 on psycopg.
                changed = len(connection.execute(statement, rows).all())
                metrics.FLEET_WRITES.labels("devices", "written").inc(changed)
                metrics.FLEET_WRITES.labels("devices", "unchanged").inc(max(0, len(rows) - changed))
                written += changed
        return written

    @staticmethod
    def register(session: Session, device: str, labels: Mapping[str, str], now: float) -> dict[str, str]:
        """Make ``device`` known with ``labels`` (merged into a known device's), in the caller's transaction (a
        provisioning's, with its credential); its labels afterwards."""
        row = session.get(DeviceRow, device, with_for_update=True)
        if row is None:
            # first_seen is the provisioning time until the device speaks; offline until it does.
            row = DeviceRow(id=device, first_seen=now, last_seen=now, online=False, agent_version="", labels={})
            session.add(row)
        merged = {**(row.labels or {}), **labels}
        row.labels = merged
        return merged

    def all(self, selector: Selector | None = None) -> list[DeviceInfo]:
        """Every device seen whose labels match ``selector`` (all of them without one), by id."""
        with self._store.transaction("list_devices") as session:
            rows = session.scalars(select(DeviceRow).order_by(DeviceRow.id))
            devices = [
                DeviceInfo(r.id, r.first_seen, r.last_seen, r.online, r.agent_version, dict(r.labels or {}))
                for r in rows
            ]
        # Matched here, not in SQL: JSON operators differ between SQLite and PostgreSQL, and fleets are small.
        return [dev for dev in devices if selector is None or selector.matches(dev.labels)]

    def update_labels(self, device: str, set_: Mapping[str, str], remove: Sequence[str] = ()) -> dict[str, str] | None:
        """Set then remove labels of a known device; its labels afterwards, or None for an unknown device."""
        with self._store.transaction("update_labels") as session:
            row = session.get(DeviceRow, device, with_for_update=True)
            if row is None:
                return None
            labels = dict(row.labels or {})
            labels.update(set_)
            for key in remove:
                labels.pop(key, None)
            row.labels = labels  # a new object, so the ORM sees the JSON change
            return labels

    def _prepared(self) -> _Upserts:
        if self._upserts is None:
            devices = DeviceRow.__table__
            touch = self._store.insert(devices)
            excluded = touch.excluded
            seen = {
                "last_seen": greatest(devices.c.last_seen, excluded.last_seen),
                "first_seen": least(devices.c.first_seen, excluded.first_seen),
                "agent_version": case(
                    (excluded.agent_version != "", excluded.agent_version), else_=devices.c.agent_version
                ),
            }
            # Written only when it changes something: a touch another replica made already writes nothing.
            changes = [
                excluded.last_seen > devices.c.last_seen + LAST_SEEN_RESOLUTION,
                excluded.first_seen < devices.c.first_seen - LAST_SEEN_RESOLUTION,
                and_(excluded.agent_version != "", excluded.agent_version != devices.c.agent_version),
            ]
            self._upserts = _Upserts(
                seen=touch.on_conflict_do_update(
                    index_elements=[devices.c.id], set_=seen, where=or_(*changes)
                ).returning(devices.c.id),
                status=touch.on_conflict_do_update(
                    index_elements=[devices.c.id],
                    set_={**seen, "online": excluded.online},
                    where=or_(excluded.online != devices.c.online, *changes),
                ).returning(devices.c.id),
            )
        return self._upserts


def _merged(seen: Sequence[DeviceSeen]) -> list[dict[str, Any]]:
    """One row per device, as applying ``seen`` in order would leave it, ordered by id.

    One row per device: RETURNING makes the executemany one multi-row statement, in which PostgreSQL refuses to
    update a row twice. Ordered by id: replicas' transactions lock the same devices in the same order."""
    rows: dict[str, dict[str, Any]] = {}
    for s in seen:
        row = rows.get(s.device)
        if row is None:
            rows[s.device] = {
                "id": s.device,
                "first_seen": s.seen_at,
                "last_seen": s.seen_at,
                "online": True if s.online is None else s.online,  # a device sending aggregates is up
                "agent_version": s.agent_version,
                "labels": {},
            }
            continue
        row["first_seen"] = min(row["first_seen"], s.seen_at)
        row["last_seen"] = max(row["last_seen"], s.seen_at)
        if s.online is not None:
            row["online"] = s.online
        if s.agent_version:
            row["agent_version"] = s.agent_version
    return [rows[device] for device in sorted(rows)]
