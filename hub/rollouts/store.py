"""Rollouts in SQL: starting one (the plan), reading them back, and the controller's snapshot of one.

Everything a rollout needs is in the ``rollouts`` and ``rollout_devices`` tables, so any hub replica can run
the controller. Changes go through :mod:`hub.rollouts.changes` (compare-and-set on ``row_version``).

The desired version compiled for each device after an assignment change is bookkept here: a change sets
``compile_pending`` and bumps ``change_seq``; whoever compiles then records the version it got, but only for
the ``change_seq`` it read before compiling, so a version can never be credited to a later change.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from edge_protocol.clocks import STEADY_WALL
from edge_protocol.messages import Reported
from hub.db.store import Store
from hub.db.tables import DeviceRow, HandlerRow, ReleaseRow, ReportedRow, RolloutDeviceRow, RolloutRow
from hub.desired import releases
from hub.errors import Conflict, NotFound, Unprocessable
from hub.fleet.labels import Selector
from hub.rollouts.plan import DeviceStatus, Limits, Observation, Progress, RolloutView, State, plan

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A rollout with its releases and every device's progress (the plan's devices, then held ones)."""

    id: int
    handler: str
    release: str
    image: str
    previous_release: str
    previous_image: str
    target: list[str]
    limits: Limits
    steps: list[list[str]]
    state: State
    step: int
    reason: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    devices: list[Progress]


class RolloutStore:
    """Start, read and list rollouts; the controller's reads and version bookkeeping."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = STEADY_WALL.now) -> None:
        self.store = store
        self.clock = clock

    def create(self, handler: str, version: str, target: Selector, limits: Limits) -> RolloutRecord:
        """Plan and store a running rollout (its first step is assigned by the controller's next tick)."""
        now = self.clock()
        with self.store.transaction("start rollout") as session:
            # The first statement writes: it takes SQLite's write lock, or PostgreSQL's lock on the handler's
            # row, so two replicas cannot both start a rollout of this handler.
            locked = session.execute(
                update(HandlerRow).where(HandlerRow.name == handler).values(updated_at=HandlerRow.updated_at)
            )
            if getattr(locked, "rowcount", 0) == 0:
                raise NotFound(f"no handler named {handler!r}")
            release = releases.find(session, handler, version)
            if release is None:
                raise Unprocessable(f"release: {handler!r} has no release {version!r} (hub release add)")
            active = releases.active_rollout(session, handler)
            if active is not None:
                raise Conflict(f"rollout {active} of {handler!r} is still in progress: abort it or let it finish")
            stable = releases.ensure_stable(session, handler, now)
            devices = releases.handler_devices(session, handler, target)
            if not devices:
                where = f"matching {target}" if target else "at all"
                raise Unprocessable(f"target: no device {where} runs {handler!r} (no subscription uses it there)")
            try:
                steps = plan(devices, limits.canary, limits.batch)
            except ValueError as exc:
                raise Unprocessable(str(exc)) from None
            row = RolloutRow(
                handler=handler,
                release_id=release.id,
                previous_release_id=stable.id,
                target=[f"{k}={v}" for k, v in target.terms],
                params=dataclasses.asdict(limits),
                steps=steps,
                state=State.RUNNING.value,
                step=0,
                reason=None,
                row_version=1,
                created_at=now,
                updated_at=now,
                finished_at=None,
            )
            session.add(row)
            session.flush()
            for index, members in enumerate(steps):
                for device in members:
                    session.add(
                        RolloutDeviceRow(
                            rollout_id=row.id,
                            device=device,
                            step=index,
                            status=DeviceStatus.PENDING.value,
                            change_seq=0,
                            compile_pending=False,
                            soak_reports=0,
                            updated_at=now,
                        )
                    )
            session.flush()
            return read_record(session, row)

    def get(self, rollout_id: int) -> RolloutRecord:
        with self.store.transaction("get rollout") as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout {rollout_id}")
            return read_record(session, row)

    def all(self, handler: str | None = None) -> list[RolloutRecord]:
        """Every rollout (of ``handler``), newest first."""
        stmt = select(RolloutRow).order_by(RolloutRow.id.desc())
        if handler is not None:
            stmt = stmt.where(RolloutRow.handler == handler)
        with self.store.transaction("list rollouts") as session:
            return [read_record(session, row) for row in session.scalars(stmt).all()]

    def running(self) -> list[int]:
        with self.store.transaction("list running rollouts") as session:
            stmt = select(RolloutRow.id).where(RolloutRow.state == State.RUNNING.value).order_by(RolloutRow.id)
            return list(session.scalars(stmt))

    def snapshot(self, rollout_id: int) -> tuple[RolloutView, dict[str, Progress], dict[str, Observation]] | None:
        """What the controller decides from: the rollout, its devices' progress, and what its step reports."""
        with self.store.transaction("read rollout") as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                return None
            release = session.get(ReleaseRow, row.release_id)
            if release is None:
                return None
            view = RolloutView(
                row.id, row.handler, release.image, State(row.state), row.step, row.steps, _limits(row.params),
                row.row_version,
            )  # fmt: skip
            progress = {p.device: p for p in _progress(session, row.id) if p.step >= 0}
            current = row.steps[row.step] if row.step < len(row.steps) else []
            return view, progress, observe(session, current)

    def pending_compiles(self, rollout_id: int | None = None) -> list[tuple[int, str, int]]:
        """(rollout, device, change_seq) of every device whose last assignment change has no version yet."""
        stmt = select(RolloutDeviceRow.rollout_id, RolloutDeviceRow.device, RolloutDeviceRow.change_seq).where(
            RolloutDeviceRow.compile_pending.is_(True)
        )
        if rollout_id is not None:
            stmt = stmt.where(RolloutDeviceRow.rollout_id == rollout_id)
        with self.store.transaction("list pending compiles") as session:
            return [(r, d, seq) for r, d, seq in session.execute(stmt)]

    def record_versions(self, compiled: Sequence[tuple[int, str, int, int]]) -> None:
        """Record (rollout, device, change_seq, version): the version compiled after that change."""
        if not compiled:
            return
        with self.store.transaction("record compiled versions") as session:
            for rollout_id, device, seq, version in compiled:
                session.execute(
                    update(RolloutDeviceRow)
                    .where(
                        RolloutDeviceRow.rollout_id == rollout_id,
                        RolloutDeviceRow.device == device,
                        RolloutDeviceRow.change_seq == seq,
                    )
                    .values(desired_version=version, compile_pending=False)
                )


def observe(session: Session, devices: Sequence[str]) -> dict[str, Observation]:
    """Each device's newest reported state (parsed), when the hub received it, and whether it is online."""
    if not devices:
        return {}
    stmt = (
        select(DeviceRow.id, DeviceRow.online, ReportedRow.state, ReportedRow.received_at)
        .outerjoin(ReportedRow, ReportedRow.device == DeviceRow.id)
        .where(DeviceRow.id.in_(list(devices)))
    )
    seen = {}
    for device, online, state, received_at in session.execute(stmt):
        reported = None
        if state is not None:
            try:
                reported = Reported.model_validate(state)
            except ValidationError as exc:
                log.warning("device %s: stored reported state does not parse: %s", device, exc.errors()[0]["msg"])
        seen[device] = Observation(reported, received_at if reported is not None else None, bool(online))
    return seen


def read_record(session: Session, row: RolloutRow) -> RolloutRecord:
    release = session.get(ReleaseRow, row.release_id)
    previous = session.get(ReleaseRow, row.previous_release_id)
    return RolloutRecord(
        id=row.id,
        handler=row.handler,
        release=release.version if release else "?",
        image=release.image if release else "?",
        previous_release=previous.version if previous else "?",
        previous_image=previous.image if previous else "?",
        target=list(row.target),
        limits=_limits(row.params),
        steps=[list(step) for step in row.steps],
        state=State(row.state),
        step=row.step,
        reason=row.reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        devices=_progress(session, row.id),
    )


def progress_of(row: RolloutDeviceRow) -> Progress:
    return Progress(
        device=row.device,
        step=row.step,
        status=DeviceStatus(row.status),
        desired_version=row.desired_version,
        assigned_at=row.assigned_at,
        healthy_at=row.healthy_at,
        soak_started_at=row.soak_started_at,
        soak_processed=row.soak_processed,
        soak_errors=row.soak_errors,
        soak_reports=row.soak_reports,
        soak_seen_at=row.soak_seen_at,
        max_lag_ms=row.max_lag_ms,
        reason=row.reason,
    )


def _progress(session: Session, rollout_id: int) -> list[Progress]:
    rows = session.scalars(select(RolloutDeviceRow).where(RolloutDeviceRow.rollout_id == rollout_id))
    found = [progress_of(row) for row in rows]
    # The plan's devices by step and id, then the held ones (step -1).
    return sorted(found, key=lambda p: (p.step < 0, p.step, p.device))


def _limits(params: dict[str, object]) -> Limits:
    known = {f.name for f in dataclasses.fields(Limits)}
    return Limits(**{k: v for k, v in params.items() if k in known})  # type: ignore[arg-type]
