"""The fleet registry: each device's status, labels, latest reported state and desired-state version.

Ingest writes reported states here, one row per device: the newest in the order the device made them, its run
(one more at every agent start) and the report's number within the run, never by a clock. So a retained message
replayed on subscribe, or a report that a slower hub replica writes late, cannot overwrite a newer one, and a
report made after the device's clock was set back still replaces the ones before it. The write is idempotent
and only ever moves forward, however many replicas make it. Reports of older agents (no run) are ordered by
their ``ts`` among themselves, as before. The same report again (every replica receives every report) writes
nothing: only a newer one replaces the row. The API reads whole device views.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from edge_protocol.messages import Reported
from hub import metrics
from hub.db.store import Store
from hub.db.tables import DesiredRow, DeviceRow, ReportedRow
from hub.fleet.devices import DeviceInfo, Devices, DeviceSeen
from hub.fleet.labels import Selector
from hub.fleet.security_events import TALLY

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device as the registry shows it."""

    info: DeviceInfo
    reported: Reported | None = None
    received_at: float | None = None
    desired_version: int | None = None

    @property
    def applied_version(self) -> int | None:
        return self.reported.applied_version if self.reported else None

    @property
    def losses_total(self) -> int:
        if self.reported is None:
            return 0
        return sum(n for reasons in self.reported.losses.values() for n in reasons.values())


@dataclass(frozen=True, slots=True)
class ReportedState:
    """A reported state to store: ``seen_at`` moves the device's ``last_seen``, ``received_at`` is the hub's."""

    reported: Reported
    seen_at: float
    received_at: float


class Fleet:
    """Reported state in, device views out."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._devices = Devices(store)
        self._upsert_reported: Any = None

    def record_reported(self, reported: Reported, *, seen_at: float, received_at: float) -> None:
        """Store ``reported`` unless a newer one is stored; ``seen_at`` moves the device's ``last_seen``."""
        with self._store.transaction("record reported") as session:
            self.write_reported(session, [ReportedState(reported, seen_at, received_at)])

    def write_reported(self, session: Session, states: Sequence[ReportedState]) -> int:
        """:meth:`record_reported` for several, within the caller's transaction (one executemany each); the
        reported rows written (a report not newer than the stored one writes nothing)."""
        if not states:
            return 0
        self._devices.touch(
            session, [DeviceSeen(s.reported.device, s.seen_at, None, s.reported.agent_version) for s in states]
        )
        rows = [
            {
                "device": s.reported.device,
                "reported_at": s.reported.ts,
                # Ordered by run only with both halves (a run without a report number counts as no run).
                "run": s.reported.run if s.reported.seq is not None else None,
                "seq": s.reported.seq if s.reported.run is not None else None,
                "received_at": s.received_at,
                "applied_version": s.reported.applied_version,
                "state": s.reported.model_dump(mode="json"),
            }
            for s in _newest(states)
        ]
        # RETURNING counts the rows written: an executemany's rowcount is -1 on psycopg.
        written = len(session.connection().execute(self._upsert(), rows).all())
        metrics.FLEET_WRITES.labels("reported", "written").inc(written)
        metrics.FLEET_WRITES.labels("reported", "unchanged").inc(max(0, len(rows) - written))
        TALLY.observe(s.reported for s in states)
        return written

    def _upsert(self) -> Any:
        # Built once: building it per reported state cost more than the write.
        if self._upsert_reported is None:
            table = ReportedRow.__table__
            stmt = self._store.insert(table)
            excluded = stmt.excluded
            self._upsert_reported = stmt.on_conflict_do_update(
                index_elements=[table.c.device],
                set_={
                    "reported_at": excluded.reported_at,
                    "run": excluded.run,
                    "seq": excluded.seq,
                    "received_at": excluded.received_at,
                    "applied_version": excluded.applied_version,
                    "state": excluded.state,
                },
                where=_newer(excluded, table.c),
            ).returning(table.c.device)
        return self._upsert_reported

    def devices(self, selector: Selector | None = None) -> list[DeviceView]:
        """Every device whose labels match ``selector`` (all without one), by id."""
        with self._store.transaction("list devices") as session:
            views = _views(session, None)
        return [view for view in views if selector is None or selector.matches(view.info.labels)]

    def device(self, device: str) -> DeviceView | None:
        with self._store.transaction("get device") as session:
            views = _views(session, device)
        return views[0] if views else None


def _newer(new: Any, old: Any) -> Any:
    """SQL: the incoming report ``new`` is newer than the stored ``old`` (equal: the same report again, which
    another replica or a retained replay already wrote: nothing to write)."""
    return or_(
        # From an agent that numbers its reports: a later run, or a later report of the same run. It replaces
        # a row without a run (written before the agent was upgraded).
        and_(
            new.run.is_not(None),
            or_(old.run.is_(None), new.run > old.run, and_(new.run == old.run, new.seq > old.seq)),
        ),
        # From an older agent: by its clock, as before (nothing better is on the wire).
        and_(new.run.is_(None), new.reported_at > old.reported_at),
    )


def _newest(states: Sequence[ReportedState]) -> list[ReportedState]:
    """Per device, the report that applying ``states`` in order through :func:`_newer` would leave, by device.

    One row per device: RETURNING makes the executemany one multi-row statement, in which PostgreSQL refuses to
    update a row twice. Ordered by device: replicas' transactions lock the same rows in the same order."""
    kept: dict[str, ReportedState] = {}
    for state in states:
        new, old = state.reported, kept.get(state.reported.device)
        if old is None or _newer_or_equal(new, old.reported):
            kept[new.device] = state
    return [kept[device] for device in sorted(kept)]


def _order(report: Reported) -> tuple[int, int] | None:
    # As the rows hold it: a run counts only with its report number.
    return (report.run, report.seq) if report.run is not None and report.seq is not None else None


def _newer_or_equal(new: Reported, old: Reported) -> bool:
    """:func:`_newer` in Python, equal included (a later copy of the same report is the same)."""
    new_order, old_order = _order(new), _order(old)
    if new_order is not None:
        return old_order is None or new_order >= old_order
    return new.ts >= old.ts


def _views(session: Session, device: str | None) -> list[DeviceView]:
    versions = select(DesiredRow.device, func.max(DesiredRow.version).label("version")).group_by(DesiredRow.device)
    if device is not None:
        versions = versions.where(DesiredRow.device == device)
    latest = versions.subquery()
    stmt = (
        select(DeviceRow, ReportedRow, latest.c.version)
        .outerjoin(ReportedRow, ReportedRow.device == DeviceRow.id)
        .outerjoin(latest, latest.c.device == DeviceRow.id)
        .order_by(DeviceRow.id)
    )
    if device is not None:
        stmt = stmt.where(DeviceRow.id == device)
    views = []
    for dev, rep, version in session.execute(stmt):
        reported = _parse(dev.id, rep.state) if rep is not None else None
        info = DeviceInfo(
            dev.id,
            dev.first_seen,
            dev.last_seen,
            dev.online,
            dev.agent_version or (reported.agent_version if reported else ""),
            dict(dev.labels or {}),
        )
        views.append(DeviceView(info, reported, rep.received_at if rep is not None else None, version))
    return views


def _parse(device: str, state: dict[str, object]) -> Reported | None:
    try:
        return Reported.model_validate(state)
    except ValidationError as exc:  # stored by an older hub whose Reported had another shape
        log.warning("device %s: stored reported state no longer parses: %s", device, exc.errors()[0]["msg"])
        return None
