"""Releases of handlers, the stable release of each, and which devices are assigned another one.

A release names the image a handler version runs, by digest. Every handler has a stable release, the one its
devices run by default; its image is also the handler spec's ``image`` (kept equal in the same transaction),
so the desired-state compiler needs only the spec and each device's assignments. A handler stored before
releases existed gets an ``initial`` release from its spec the first time one is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from hub.db.store import Store
from hub.db.tables import (
    AssignmentRow,
    DeviceRow,
    HandlerRow,
    ReleaseRow,
    RolloutRow,
    StableReleaseRow,
    SubscriptionRow,
)
from hub.errors import Conflict, NotFound, StoreConflict
from hub.fleet.labels import Selector

INITIAL = "initial"
ACTIVE_STATES = ("running", "paused")


@dataclass(frozen=True, slots=True)
class Release:
    id: int
    handler: str
    version: str
    image: str
    source: str
    created_at: float
    stable: bool = False


def release_of(row: ReleaseRow, stable_id: int | None = None) -> Release:
    return Release(row.id, row.handler, row.version, row.image, row.source, row.created_at, row.id == stable_id)


class Releases:
    """Adds and lists releases (NotFound: no such handler; Conflict: the version exists)."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def add(self, handler: str, version: str, image: str, source: str) -> Release:
        try:
            with self._store.transaction("add release") as session:
                stable = ensure_stable(session, handler, self._clock())
                if find(session, handler, version) is not None:
                    raise Conflict(f"handler {handler!r} already has a release {version!r}")
                row = ReleaseRow(handler=handler, version=version, image=image, source=source, created_at=self._clock())
                session.add(row)
                session.flush()
                return release_of(row, stable.id)
        except StoreConflict as exc:
            raise Conflict(f"release {version!r} of {handler!r} was added meanwhile: {exc.reason}") from exc

    def list(self, handler: str) -> list[Release]:
        with self._store.transaction("list releases") as session:
            stable = ensure_stable(session, handler, self._clock())
            rows = session.scalars(select(ReleaseRow).where(ReleaseRow.handler == handler).order_by(ReleaseRow.id))
            return [release_of(row, stable.id) for row in rows]


def find(session: Session, handler: str, version: str) -> ReleaseRow | None:
    return session.scalars(
        select(ReleaseRow).where(ReleaseRow.handler == handler, ReleaseRow.version == version)
    ).first()


def ensure_stable(session: Session, handler: str, now: float) -> ReleaseRow:
    """The handler's stable release; one made from its spec (``initial``) if it has none. NotFound: no handler."""
    pointer = session.get(StableReleaseRow, handler)
    if pointer is not None:
        release = session.get(ReleaseRow, pointer.release_id)
        if release is not None:
            return release
    spec_row = session.get(HandlerRow, handler)
    if spec_row is None:
        raise NotFound(f"no handler named {handler!r}")
    image = str(spec_row.spec["image"])
    release = session.scalars(
        select(ReleaseRow).where(ReleaseRow.handler == handler, ReleaseRow.image == image).order_by(ReleaseRow.id)
    ).first()
    if release is None:
        release = ReleaseRow(handler=handler, version=_free_version(session, handler), image=image, source=image)
        release.created_at = now
        session.add(release)
        session.flush()
    set_stable(session, handler, release, now)
    return release


def adopt_image(session: Session, handler: str, image: str, version: str | None, now: float) -> ReleaseRow:
    """A handler spec was stored with ``image``: make its release (``version``, made if need be) the stable one."""
    current = session.get(StableReleaseRow, handler)
    release = find(session, handler, version) if version is not None else None
    if release is not None and release.image != image:
        raise Conflict(f"release {version!r} of {handler!r} is {release.image}, not {image}")
    if release is None and version is None and current is not None:
        stable = session.get(ReleaseRow, current.release_id)
        if stable is not None and stable.image == image:
            return stable
    if current is not None and active_rollout(session, handler) is not None:
        raise Conflict(f"a rollout of {handler!r} is in progress: abort it before changing the handler's image")
    if release is None:
        release = ReleaseRow(
            handler=handler, version=version or _free_version(session, handler), image=image, source=image
        )
        release.created_at = now
        session.add(release)
        session.flush()
    set_stable(session, handler, release, now)
    return release


def set_stable(session: Session, handler: str, release: ReleaseRow, now: float) -> None:
    """Point the handler at ``release`` and give its spec that image (the devices that follow stable move)."""
    pointer = session.get(StableReleaseRow, handler)
    if pointer is None:
        session.add(StableReleaseRow(handler=handler, release_id=release.id, updated_at=now))
    else:
        pointer.release_id = release.id
        pointer.updated_at = now
    spec_row = session.get(HandlerRow, handler)
    if spec_row is not None and spec_row.spec.get("image") != release.image:
        spec_row.spec = {**spec_row.spec, "image": release.image}  # a new dict, so the ORM sees the change


def assignment(session: Session, device: str, handler: str) -> int | None:
    row = session.get(AssignmentRow, (device, handler))
    return None if row is None else row.release_id


def restore(session: Session, device: str, handler: str, release_id: int | None, now: float) -> None:
    """Put ``device`` on ``release_id`` (None or the stable release: follow stable, no assignment)."""
    stable = session.get(StableReleaseRow, handler)
    if release_id is None or (stable is not None and stable.release_id == release_id):
        session.execute(delete(AssignmentRow).where(AssignmentRow.device == device, AssignmentRow.handler == handler))
        return
    row = session.get(AssignmentRow, (device, handler))
    if row is None:
        session.add(AssignmentRow(device=device, handler=handler, release_id=release_id, assigned_at=now))
    elif row.release_id != release_id:
        row.release_id = release_id
        row.assigned_at = now


def assign(session: Session, device: str, handler: str, release_id: int, now: float) -> None:
    """Pin ``device`` to ``release_id`` whatever the stable release is."""
    row = session.get(AssignmentRow, (device, handler))
    if row is None:
        session.add(AssignmentRow(device=device, handler=handler, release_id=release_id, assigned_at=now))
    elif row.release_id != release_id:
        row.release_id = release_id
        row.assigned_at = now


def assigned_images(session: Session, devices: Sequence[str]) -> dict[str, dict[str, str]]:
    """device -> handler -> image of its assigned release, for the compiler."""
    stmt = (
        select(AssignmentRow.device, AssignmentRow.handler, ReleaseRow.image)
        .join(ReleaseRow, ReleaseRow.id == AssignmentRow.release_id)
        .where(AssignmentRow.device.in_(list(devices)))
    )
    out: dict[str, dict[str, str]] = {}
    for device, handler, image in session.execute(stmt):
        out.setdefault(device, {})[handler] = image
    return out


def handler_devices(session: Session, handler: str, selector: Selector | None = None) -> list[str]:
    """Devices that run ``handler`` (a subscription using it targets them) and match ``selector``, by id."""
    rows = session.scalars(select(SubscriptionRow.target).where(SubscriptionRow.handler == handler))
    targets = [Selector.parse(target) for target in rows]
    if not targets:
        return []
    devices = session.execute(select(DeviceRow.id, DeviceRow.labels).order_by(DeviceRow.id))
    return [
        device
        for device, labels in devices
        if any(t.matches(labels or {}) for t in targets) and (selector is None or selector.matches(labels or {}))
    ]


def active_rollout(session: Session, handler: str) -> int | None:
    return session.scalar(
        select(RolloutRow.id).where(RolloutRow.handler == handler, RolloutRow.state.in_(ACTIVE_STATES)).limit(1)
    )


def _free_version(session: Session, handler: str) -> str:
    taken = set(session.scalars(select(ReleaseRow.version).where(ReleaseRow.handler == handler)))
    if INITIAL not in taken:
        return INITIAL
    n = len(taken) + 1
    while f"r{n}" in taken:
        n += 1
    return f"r{n}"
