"""Changes to rollouts, each one compare-and-set on the rollout's ``row_version``.

The controller decides from a snapshot (:meth:`RolloutStore.snapshot`) and commits here: the first statement
is ``UPDATE rollouts ... WHERE row_version = <read>``; when another replica (or an operator's pause) changed
the rollout since, no row matches and nothing is written, so a step is never advanced twice. The same
transaction changes device rows and release assignments; compiling the affected devices comes after the
commit (``compile_pending``), as for every other change.

Putting a device back means: its assignment before the rollout (None: it followed the stable release), or
else the rollout's previous release; a device put on the stable release has no assignment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hub.db.tables import ReleaseRow, RolloutDeviceRow, RolloutRow, StableReleaseRow
from hub.desired import releases
from hub.errors import Conflict, NotFound, StoreError
from hub.rollouts.plan import ON_NEW_RELEASE, DeviceStatus, Progress, RolloutView, State, Transition
from hub.rollouts.store import RolloutRecord, RolloutStore, read_record

ATTEMPTS = 5
_ALLOWED: dict[str, tuple[State, ...]] = {
    "pause": (State.RUNNING,),
    "resume": (State.PAUSED,),
    "abort": (State.RUNNING, State.PAUSED),
    "undo": (State.RUNNING, State.PAUSED, State.HALTED, State.ABORTED, State.COMPLETED),
}


@dataclass(frozen=True, slots=True)
class Controlled:
    """The rollout after an operator's command, and devices whose stable release moved under them."""

    rollout: RolloutRecord
    recompile: list[str]


class RolloutChanges:
    """Commits controller transitions and operators' commands."""

    def __init__(self, rollouts: RolloutStore, *, clock: Callable[[], float] | None = None) -> None:
        self._rollouts = rollouts
        self._store = rollouts.store
        self._clock = clock or rollouts.clock

    def commit(
        self, view: RolloutView, transition: Transition, *, fence: Callable[[Session], None] | None = None
    ) -> bool:
        """Apply ``transition``, decided from ``view``; False (nothing written) if the rollout moved since.

        ``fence`` (the controller's lease, :class:`hub.leases.Fence`) runs right after the compare-and-set and
        raises to roll the transaction back when this replica's lease tenure is over."""
        now = self._clock()
        with self._store.transaction("advance rollout") as session:
            finished = now if transition.state not in (State.RUNNING, State.PAUSED) else None
            if not _cas(session, view.id, view.row_version, transition.state, transition.step, transition.reason,
                        now, finished):  # fmt: skip
                return False
            if fence is not None:
                fence(session)
            row = session.get(RolloutRow, view.id)
            assert row is not None
            for progress in transition.devices.values():
                _write(session, row.id, progress, now)
            for device in transition.assign:
                dev = _device(session, row.id, device)
                dev.previous_release_id = releases.assignment(session, device, row.handler)
                releases.assign(session, device, row.handler, row.release_id, now)
                _changed(dev)
            for device in transition.revert:
                _put_back(session, row, _device(session, row.id, device), now)
            if transition.complete:
                _complete(session, row, now)
            return True

    def control(self, rollout_id: int, command: str) -> Controlled:
        """``pause``, ``resume``, ``abort`` or ``undo``; Conflict when the rollout's state does not allow it."""
        for _ in range(ATTEMPTS):
            now = self._clock()
            with self._store.transaction(f"{command} rollout") as session:
                row = session.get(RolloutRow, rollout_id)
                if row is None:
                    raise NotFound(f"no rollout {rollout_id}")
                state = State(row.state)
                if state not in _ALLOWED[command]:
                    raise Conflict(f"rollout {rollout_id} is {state.value}: it cannot be {_past(command)}")
                target = {"pause": State.PAUSED, "resume": State.RUNNING, "abort": State.ABORTED}.get(
                    command, State.UNDONE
                )
                finished = None if target in (State.RUNNING, State.PAUSED) else now
                reason = row.reason if command != "abort" else "aborted by an operator"
                if not _cas(session, row.id, row.row_version, target, row.step, reason, now, finished):
                    continue
                session.refresh(row)
                recompile: list[str] = []
                if command == "resume":
                    _restart_clocks(session, row.id, now)
                elif command == "undo":
                    recompile = _undo(session, row, now)
                return Controlled(read_record(session, row), recompile)
        raise StoreError(f"{command} rollout", f"rollout {rollout_id} kept changing; try again")


def _cas(
    session: Session, rollout_id: int, seen: int, state: State, step: int, reason: str | None, now: float,
    finished: float | None,
) -> bool:  # fmt: skip
    result = session.execute(
        update(RolloutRow)
        .where(RolloutRow.id == rollout_id, RolloutRow.row_version == seen)
        .values(row_version=seen + 1, state=state.value, step=step, reason=reason, updated_at=now, finished_at=finished)
    )
    return bool(getattr(result, "rowcount", 0))


def _device(session: Session, rollout_id: int, device: str) -> RolloutDeviceRow:
    row = session.get(RolloutDeviceRow, (rollout_id, device))
    assert row is not None, f"rollout {rollout_id} has no device {device}"
    return row


def _write(session: Session, rollout_id: int, p: Progress, now: float) -> None:
    # desired_version, change_seq and compile_pending are not the state machine's: see RolloutStore.
    row = _device(session, rollout_id, p.device)
    row.status = p.status.value
    row.assigned_at = p.assigned_at
    row.healthy_at = p.healthy_at
    row.soak_started_at = p.soak_started_at
    row.soak_processed = p.soak_processed
    row.soak_errors = p.soak_errors
    row.soak_reports = p.soak_reports
    row.soak_seen_at = p.soak_seen_at
    row.max_lag_ms = p.max_lag_ms
    row.reason = p.reason
    row.updated_at = now


def _changed(dev: RolloutDeviceRow) -> None:
    dev.change_seq += 1
    dev.compile_pending = True
    dev.desired_version = None


def _put_back(session: Session, rollout: RolloutRow, dev: RolloutDeviceRow, now: float) -> None:
    target = dev.previous_release_id if dev.previous_release_id is not None else rollout.previous_release_id
    releases.restore(session, dev.device, rollout.handler, target, now)
    _changed(dev)
    dev.updated_at = now


def _complete(session: Session, rollout: RolloutRow, now: float) -> None:
    """The release becomes stable; devices outside the plan that followed stable are held where they were."""
    release = session.get(ReleaseRow, rollout.release_id)
    assert release is not None
    planned = {device for step in rollout.steps for device in step}
    if rollout.previous_release_id != rollout.release_id:
        for device in releases.handler_devices(session, rollout.handler):
            if device in planned or releases.assignment(session, device, rollout.handler) is not None:
                continue
            releases.assign(session, device, rollout.handler, rollout.previous_release_id, now)
            session.add(
                RolloutDeviceRow(
                    rollout_id=rollout.id, device=device, step=-1, status=DeviceStatus.HELD.value,
                    previous_release_id=None, change_seq=0, compile_pending=False, soak_reports=0,
                    reason="outside the rollout: kept on the previous release", updated_at=now,
                )
            )  # fmt: skip
    releases.set_stable(session, rollout.handler, release, now)
    for device in planned:  # they run the stable release now: follow it
        releases.restore(session, device, rollout.handler, release.id, now)


def _undo(session: Session, rollout: RolloutRow, now: float) -> list[str]:
    """Every device this rollout left on its release goes back; a stable release it set goes back too."""
    stable = session.get(StableReleaseRow, rollout.handler)
    moved: list[str] = []
    if stable is not None and stable.release_id == rollout.release_id != rollout.previous_release_id:
        previous = session.get(ReleaseRow, rollout.previous_release_id)
        assert previous is not None
        releases.set_stable(session, rollout.handler, previous, now)
        moved = releases.handler_devices(session, rollout.handler)  # every follower of stable changes
    touched = ON_NEW_RELEASE | {DeviceStatus.HELD}
    rows = session.scalars(select(RolloutDeviceRow).where(RolloutDeviceRow.rollout_id == rollout.id)).all()
    for dev in rows:
        if DeviceStatus(dev.status) in touched:
            _put_back(session, rollout, dev, now)
            dev.status = DeviceStatus.UNDONE.value
            dev.reason = "put back on the previous release by undo"
    return moved


def _restart_clocks(session: Session, rollout_id: int, now: float) -> None:
    """After a pause the current step's waits start over: health from now, soaks from a new baseline."""
    waiting = (DeviceStatus.ASSIGNED.value, DeviceStatus.SOAKING.value)
    session.execute(
        update(RolloutDeviceRow)
        .where(RolloutDeviceRow.rollout_id == rollout_id, RolloutDeviceRow.status.in_(waiting))
        .values(
            status=DeviceStatus.ASSIGNED.value, assigned_at=now, healthy_at=None, soak_started_at=None,
            soak_processed=None, soak_errors=None, soak_reports=0, soak_seen_at=None, max_lag_ms=None, updated_at=now,
        )
    )  # fmt: skip


def _past(command: str) -> str:
    return {"pause": "paused", "resume": "resumed", "abort": "aborted", "undo": "undone"}[command]
