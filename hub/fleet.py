"""The fleet registry: each device's status, labels, latest reported state and desired-state version.

Ingest writes reported states here (one row per device, the newest by the agent's ``ts`` wins, so a retained
message replayed on subscribe cannot overwrite a fresher one); the API reads whole device views.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edge_protocol.messages import Reported
from hub.labels import Selector
from hub.records import DeviceInfo
from hub.store import Store
from hub.tables import DesiredRow, DeviceRow, ReportedRow

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


class Fleet:
    """Reported state in, device views out."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def record_reported(self, reported: Reported, *, seen_at: float, received_at: float) -> None:
        """Store ``reported`` unless a newer one is stored; ``seen_at`` moves the device's ``last_seen``."""
        with self._store.transaction("record reported") as session:
            self.write_reported(session, reported, seen_at=seen_at, received_at=received_at)

    def write_reported(self, session: Session, reported: Reported, *, seen_at: float, received_at: float) -> None:
        """:meth:`record_reported` within the caller's transaction."""
        stmt = self._store.insert(ReportedRow).values(
            device=reported.device,
            reported_at=reported.ts,
            received_at=received_at,
            applied_version=reported.applied_version,
            state=reported.model_dump(mode="json"),
        )
        excluded = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=[ReportedRow.device],
            set_={
                "reported_at": excluded.reported_at,
                "received_at": excluded.received_at,
                "applied_version": excluded.applied_version,
                "state": excluded.state,
            },
            where=excluded.reported_at >= ReportedRow.reported_at,
        )
        self._store.touch_device(
            session, reported.device, seen_at, online=None, agent_version=reported.agent_version or None
        )
        session.execute(stmt)

    def devices(self, selector: Selector | None = None) -> list[DeviceView]:
        """Every device whose labels match ``selector`` (all without one), by id."""
        with self._store.transaction("list devices") as session:
            views = _views(session, None)
        return [view for view in views if selector is None or selector.matches(view.info.labels)]

    def device(self, device: str) -> DeviceView | None:
        with self._store.transaction("get device") as session:
            views = _views(session, device)
        return views[0] if views else None


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
