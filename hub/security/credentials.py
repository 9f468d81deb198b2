"""The hub's record of device credentials (table ``device_credentials``): what was issued, to whom, until when,
and what was revoked. Blocking (SQL): async callers use ``asyncio.to_thread``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import ColumnElement, or_, select

from hub.db.store import Store
from hub.db.tables import CredentialRow
from hub.fleet.devices import Devices

CERTIFICATE, PASSWORD = "certificate", "password"


@dataclass(frozen=True, slots=True)
class Credential:
    """One issued credential; ``serial`` and ``not_after`` are a certificate's."""

    device: str
    kind: str
    serial: str | None
    not_after: float | None
    issued_at: float
    revoked_at: float | None


def _of(row: CredentialRow) -> Credential:
    return Credential(row.device, row.kind, row.serial, row.not_after, row.issued_at, row.revoked_at)


def _active(now: float) -> list[ColumnElement[bool]]:
    return [
        CredentialRow.revoked_at.is_(None),
        or_(CredentialRow.not_after.is_(None), CredentialRow.not_after > now),
    ]


def active(store: Store, device: str, now: float) -> list[Credential]:
    """The device's credentials neither revoked nor expired."""
    with store.transaction("active_credentials") as session:
        stmt = select(CredentialRow).where(CredentialRow.device == device, *_active(now))
        return [_of(row) for row in session.scalars(stmt)]


def credentials(store: Store, device: str | None = None) -> list[Credential]:
    """Every credential issued (to ``device``), oldest first."""
    stmt = select(CredentialRow).order_by(CredentialRow.issued_at, CredentialRow.id)
    if device is not None:
        stmt = stmt.where(CredentialRow.device == device)
    with store.transaction("list_credentials") as session:
        return [_of(row) for row in session.scalars(stmt)]


def register(
    store: Store,
    device: str,
    labels: Mapping[str, str],
    credential: Credential,
) -> dict[str, str]:
    """Record ``credential`` and make the device known with ``labels`` (merged into a known device's); one
    transaction. Returns the device's labels afterwards."""
    now = credential.issued_at
    with store.transaction("register_device") as session:
        merged = Devices.register(session, device, labels, now)
        session.add(
            CredentialRow(
                device=device,
                kind=credential.kind,
                serial=credential.serial,
                not_after=credential.not_after,
                issued_at=now,
                revoked_at=None,
            )
        )
        return merged


def revoke(store: Store, device: str, now: float) -> list[Credential]:
    """Mark every unrevoked credential of ``device`` revoked at ``now``; those credentials."""
    with store.transaction("revoke_credentials") as session:
        stmt = select(CredentialRow).where(CredentialRow.device == device, CredentialRow.revoked_at.is_(None))
        rows = list(session.scalars(stmt.with_for_update()))
        for row in rows:
            row.revoked_at = now
        return [_of(row) for row in rows]


def revoked_certificates(store: Store, now: float) -> list[tuple[str, float]]:
    """(serial, revoked_at) of every revoked certificate not yet expired: what the CRL must list."""
    stmt = select(CredentialRow).where(
        CredentialRow.kind == CERTIFICATE,
        CredentialRow.serial.is_not(None),
        CredentialRow.revoked_at.is_not(None),
        CredentialRow.not_after > now,
    )
    with store.transaction("revoked_certificates") as session:
        return [(str(r.serial), float(r.revoked_at or now)) for r in session.scalars(stmt.order_by(CredentialRow.id))]
