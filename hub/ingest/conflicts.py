"""Telling a redelivery from a conflict: the same window again, or another window under a stored window id.

Every stored window keeps the hash of its content (:func:`content_hash`). When an insert skips some rows (their
window id is stored already), the offered records' hashes are compared with the stored ones in the same
transaction: equal, it is a redelivery (acked as stored, as always); different, it is a conflict. A conflict is
refused, never acked as stored: the agent gives the record up into its loss ledger (reason ``conflict``), and
the hub records it here, once per window id and offered content, so that ``hub device show`` counts it.

Rows stored before the hash existed have none: their hash is computed from the stored columns when needed.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edge_protocol.aggregate import FieldState, WindowResult
from hub.db.store import Store
from hub.db.tables import AggregateRow, RefusedWindowRow

CONFLICT = "conflict"
_LOOKUP_CHUNK = 500
"""Window ids per ``IN (...)`` when reading stored hashes back: far below both databases' parameter limits."""


def content_hash(result: WindowResult) -> str:
    """SHA-256 (hex) of the result's canonical JSON: its wire fields, keys sorted, so that the same window sent
    with its keys in another order (or read back from PostgreSQL's JSONB, which reorders them) hashes the same."""
    return hashlib.sha256(orjson.dumps(result.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Offered:
    """One record of a batch being inserted: which batch, its sequence, its window id and content hash."""

    batch: int
    seq: int
    window_id: str
    device: str
    digest: str


def refuse_conflicts(session: Session, offered: Sequence[Offered], now: float) -> dict[int, dict[int, str]]:
    """After an insert that skipped rows: batch index -> {seq: reason} of the records whose window id is stored
    with other content. Records them in ``refused_windows`` within ``session``."""
    stored = _stored_hashes(session, list(dict.fromkeys(o.window_id for o in offered)))
    refused: dict[int, dict[int, str]] = defaultdict(dict)
    conflicts: dict[tuple[str, str], Offered] = {}
    for record in offered:
        if stored.get(record.window_id) == record.digest:
            continue
        refused[record.batch][record.seq] = CONFLICT
        conflicts.setdefault((record.window_id, record.digest), record)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for record in offered:
        if (record.window_id, record.digest) in conflicts:
            counts[(record.window_id, record.digest)] += 1
    for key, record in conflicts.items():
        _record(session, record, stored.get(record.window_id), counts[key], now)
    return dict(refused)


def _stored_hashes(session: Session, window_ids: list[str]) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for at in range(0, len(window_ids), _LOOKUP_CHUNK):
        chunk = window_ids[at : at + _LOOKUP_CHUNK]
        legacy: list[str] = []
        for window_id, digest in session.execute(
            select(AggregateRow.window_id, AggregateRow.content_hash).where(AggregateRow.window_id.in_(chunk))
        ):
            if digest is None:
                legacy.append(window_id)
            else:
                hashes[window_id] = digest
        if legacy:
            for row in session.scalars(select(AggregateRow).where(AggregateRow.window_id.in_(legacy))):
                hashes[row.window_id] = content_hash(_result_of(row))
    return hashes


def _result_of(row: AggregateRow) -> WindowResult:
    return WindowResult(
        id=row.window_id,
        subscription=row.subscription,
        revision=row.revision,
        group=row.group,
        window_start=row.window_start,
        window_end=row.window_end,
        part=row.part,
        events=row.events,
        fields={name: FieldState.model_validate(state) for name, state in row.fields.items()},
        stats=list(row.stats),
    )


def _record(session: Session, record: Offered, stored_hash: str | None, times: int, now: float) -> None:
    row = session.get(RefusedWindowRow, (record.window_id, record.digest))
    if row is None:
        session.add(
            RefusedWindowRow(
                window_id=record.window_id,
                offered_hash=record.digest,
                device=record.device,
                reason=CONFLICT,
                stored_hash=stored_hash,
                first_at=now,
                last_at=now,
                times=times,
            )
        )
    else:
        row.last_at = now
        row.times += times
    session.flush()


class Refusals:
    """The refused windows, as the API shows them per device."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def by_device(self, device: str) -> dict[str, int]:
        """reason -> distinct refused windows (window id and content) of ``device``."""
        stmt = (
            select(RefusedWindowRow.reason, func.count())
            .where(RefusedWindowRow.device == device)
            .group_by(RefusedWindowRow.reason)
        )
        with self._store.transaction("refusals") as session:
            return {reason: int(n) for reason, n in session.execute(stmt)}
