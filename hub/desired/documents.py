"""Desired state: compile each device's document from the catalog and its labels, version it, sign it.

A device's document holds the subscriptions whose target matches its labels and the handlers they use, each
with the image of the release the device is assigned (``hub.desired.releases``; by default the stable one). Its
version is a per-device integer in the ``desired`` table: a new version (previous + 1) only when the
document's ``content_hash()`` changed, so recompiling is idempotent and the version never decreases, across
restarts and replicas alike. With a ``validity``, each document expires that long after it is signed
(``expires_at``); ``hub.desired.renewal`` re-signs the current version, same content, before it does.

Concurrency (several hub replicas, one database): a compile locks the rows of the devices it compiles first
(``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite a write takes the database's write lock), then reads the
catalog, the labels and the current versions in the same transaction. Compiles of one device are thereby
serialised, and each reads a catalog at least as new as every change committed before it started; since
every change triggers a compile after its commit, the last version always reflects the last change. The
unique (device, version) key backs this up: an insert that loses a race is retried after re-reading.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from edge_protocol.desired import DesiredDocument, SignedDesired, key_id, sign_document
from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from hub.db.store import Store
from hub.db.tables import DesiredRow, DeviceRow
from hub.desired.catalog import Snapshot, read_snapshot
from hub.desired.releases import assigned_images
from hub.errors import StoreConflict, StoreError
from hub.fleet.devices import Devices

log = logging.getLogger(__name__)

CHUNK = 200
"""Devices compiled per transaction."""
KEEP_VERSIONS = 20
"""Versions kept per device (older ones are pruned; only the newest is ever published)."""
ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class DesiredVersion:
    """The outcome of compiling one device: its current version, and whether this compile made it."""

    device: str
    version: int
    changed: bool


@dataclass(frozen=True, slots=True)
class DesiredRecord:
    """One stored version of a device's desired state."""

    device: str
    version: int
    content_hash: str
    document: DesiredDocument
    envelope: str
    created_at: float
    published_at: float | None


def compile_content(
    device: str, labels: Mapping[str, str], snapshot: Snapshot, images: Mapping[str, str] | None = None
) -> tuple[list[HandlerSpec], list[SubscriptionSpec]]:
    """The handlers and subscriptions for a device with ``labels``, sorted by name; ``images`` (handler ->
    image of the release the device is assigned) overrides the handler's stable image."""
    subscriptions = []
    for sub in snapshot.subscriptions:
        if not sub.target.matches(labels):
            continue
        if sub.spec.handler not in snapshot.handlers:  # the foreign key prevents this; never send a broken document
            log.error("subscription %s names a missing handler %s: left out for %s", sub.name, sub.spec.handler, device)
            continue
        subscriptions.append(sub.spec)
    names = sorted({sub.handler for sub in subscriptions})
    images = images or {}
    handlers = [snapshot.handlers[name] for name in names]
    handlers = [h.model_copy(update={"image": images[h.name]}) if h.name in images else h for h in handlers]
    return handlers, sorted(subscriptions, key=lambda s: s.name)


class DesiredStore:
    """Compiles, versions and signs desired state in the store; reads it back for the publisher and the API."""

    def __init__(
        self,
        store: Store,
        key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
        validity: float = 0.0,
    ) -> None:
        self.store = store
        self._key = key
        self.clock = clock
        self.validity = validity
        """Seconds a signed document stays valid; 0 signs no expiry (agents older than expires_at need that)."""
        self.key_id = key_id(key.public_key())

    def sign(self, document: DesiredDocument, now: float) -> SignedDesired:
        """``document`` issued at ``now``, expiring ``validity`` later (never with 0), signed."""
        expires_at = now + self.validity if self.validity > 0 else None
        return sign_document(document.model_copy(update={"issued_at": now, "expires_at": expires_at}), self._key)

    def recompile(self, devices: Iterable[str] | None = None) -> list[DesiredVersion]:
        """Compile ``devices`` (None: every known device; unknown ids are skipped), by id."""
        ids = sorted(set(devices)) if devices is not None else [d.id for d in Devices(self.store).all()]
        out: list[DesiredVersion] = []
        for start in range(0, len(ids), CHUNK):
            out += self._recompile_chunk(ids[start : start + CHUNK])
        return out

    def _recompile_chunk(self, ids: Sequence[str]) -> list[DesiredVersion]:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with self.store.transaction("compile desired state") as session:
                    return self._compile(session, ids)
            except StoreConflict as exc:
                # Another replica inserted the same (device, version) first: re-read and compile again.
                log.info("desired state of %d device(s) raced another writer (attempt %d): %s", len(ids), attempt, exc)
        raise StoreError("compile desired state", f"still conflicting after {ATTEMPTS} attempts")

    def _compile(self, session: Session, ids: Sequence[str]) -> list[DesiredVersion]:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(select(DeviceRow.id).where(DeviceRow.id.in_(ids)).order_by(DeviceRow.id).with_for_update())
        else:  # SQLite: the first write of a transaction takes the database's write lock
            session.execute(update(DeviceRow).where(DeviceRow.id.in_(ids)).values(last_seen=DeviceRow.last_seen))
        rows = session.execute(select(DeviceRow.id, DeviceRow.labels).where(DeviceRow.id.in_(ids)))
        labels: dict[str, dict[str, str]] = {device: dict(row_labels or {}) for device, row_labels in rows}
        snapshot = read_snapshot(session)
        assigned = assigned_images(session, ids)
        current = _current(session, ids)
        now = self.clock()
        out = []
        for device in ids:
            if device not in labels:
                continue
            handlers, subscriptions = compile_content(device, labels[device], snapshot, assigned.get(device))
            version, content_hash = current.get(device, (0, ""))
            candidate = DesiredDocument(
                device=device, version=version + 1, issued_at=now, handlers=handlers, subscriptions=subscriptions
            )
            new_hash = candidate.content_hash()
            if new_hash == content_hash:
                out.append(DesiredVersion(device, version, changed=False))
                continue
            envelope = self.sign(candidate, now)
            session.add(
                DesiredRow(
                    device=device,
                    version=candidate.version,
                    content_hash=new_hash,
                    document=envelope.document,
                    envelope=envelope.model_dump_json(),
                    created_at=now,
                    published_at=None,
                )
            )
            session.execute(
                delete(DesiredRow).where(
                    DesiredRow.device == device, DesiredRow.version <= candidate.version - KEEP_VERSIONS
                )
            )
            out.append(DesiredVersion(device, candidate.version, changed=True))
        return out

    def current(self, device: str) -> DesiredRecord | None:
        """The newest version of ``device``'s desired state, or None before its first compile."""
        return current_record(self.store, device)

    def has_document(self, device: str) -> bool:
        with self.store.transaction("read desired state") as session:
            return session.scalar(select(DesiredRow.version).where(DesiredRow.device == device).limit(1)) is not None

    def unpublished(self) -> list[str]:
        """Devices whose newest version the broker has not acknowledged yet."""
        latest = select(DesiredRow.device, func.max(DesiredRow.version).label("version")).group_by(DesiredRow.device)
        sub = latest.subquery()
        stmt = (
            select(DesiredRow.device)
            .join(sub, (sub.c.device == DesiredRow.device) & (sub.c.version == DesiredRow.version))
            .where(DesiredRow.published_at.is_(None))
            .order_by(DesiredRow.device)
        )
        with self.store.transaction("list unpublished desired state") as session:
            return list(session.scalars(stmt))

    def mark_published(self, device: str, version: int, at: float, envelope: str | None = None) -> int:
        """Record that ``version`` (signed as ``envelope``, when given) reached the broker; returns the device's
        newest version now. A version re-signed meanwhile (another envelope) stays unpublished."""
        newest = self.mark_published_newest(device, version, at, envelope)
        return 0 if newest is None else newest.version

    def mark_published_newest(
        self, device: str, version: int, at: float, envelope: str | None = None
    ) -> DesiredRecord | None:
        """:meth:`mark_published`, returning the device's newest version as stored now (read in the same
        transaction), so a publisher can tell whether the envelope it published is still the stored one."""
        stmt = update(DesiredRow).where(DesiredRow.device == device, DesiredRow.version == version)
        if envelope is not None:
            stmt = stmt.where(DesiredRow.envelope == envelope)
        with self.store.transaction("mark desired state published") as session:
            session.execute(stmt.values(published_at=at))
            row = session.scalars(
                select(DesiredRow).where(DesiredRow.device == device).order_by(DesiredRow.version.desc()).limit(1)
            ).first()
            return None if row is None else _record(row)

    def mark_unpublished(self, device: str, version: int, envelope: str) -> bool:
        """Mark ``version`` unpublished again if it is still signed as ``envelope`` (compare and set), so the
        next sweep publishes it; whether a row was changed."""
        stmt = (
            update(DesiredRow)
            .where(DesiredRow.device == device, DesiredRow.version == version, DesiredRow.envelope == envelope)
            .values(published_at=None)
        )
        with self.store.transaction("mark desired state unpublished") as session:
            return getattr(session.execute(stmt), "rowcount", 0) == 1


def current_record(store: Store, device: str) -> DesiredRecord | None:
    """The newest version of ``device``'s desired state in ``store`` (no key needed to read it)."""
    with store.transaction("read desired state") as session:
        row = session.scalars(
            select(DesiredRow).where(DesiredRow.device == device).order_by(DesiredRow.version.desc()).limit(1)
        ).first()
        return None if row is None else _record(row)


def _current(session: Session, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    latest = (
        select(DesiredRow.device, func.max(DesiredRow.version).label("version"))
        .where(DesiredRow.device.in_(ids))
        .group_by(DesiredRow.device)
        .subquery()
    )
    stmt = select(DesiredRow.device, DesiredRow.version, DesiredRow.content_hash).join(
        latest, (latest.c.device == DesiredRow.device) & (latest.c.version == DesiredRow.version)
    )
    return {device: (version, content_hash) for device, version, content_hash in session.execute(stmt)}


def _record(row: DesiredRow) -> DesiredRecord:
    return DesiredRecord(
        device=row.device,
        version=row.version,
        content_hash=row.content_hash,
        document=DesiredDocument.model_validate_json(row.document),
        envelope=row.envelope,
        created_at=row.created_at,
        published_at=row.published_at,
    )
