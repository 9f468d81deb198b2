"""The aggregates table: window results stored once per window id, and the queries the API runs on them.

Its one owner: ingest writes here (a result delivered twice is stored once; another result under a stored id is
refused as a conflict, :mod:`hub.ingest.conflicts`), the API reads here (the parts of a window, from several
intake workers, merged into one) and :mod:`hub.ingest.rollup` merges what it reads.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_protocol.aggregate import FieldState
from edge_protocol.messages import SequencedResult
from hub.db.store import Store
from hub.db.tables import AggregateRow
from hub.errors import StoreError
from hub.fleet.devices import Devices, DeviceSeen
from hub.ingest.conflicts import Offered, content_hash, refuse_conflicts

_FIELDS_JSON: TypeAdapter[dict[str, FieldState]] = TypeAdapter(dict[str, FieldState])


@dataclass(frozen=True, slots=True)
class StoredAggregate:
    """One stored window result, as the API returns it."""

    window_id: str
    device: str
    subscription: str
    revision: str
    group: str
    window_start: float
    window_end: float
    part: int
    events: int
    fields: dict[str, FieldState]
    stats: list[str]
    stored_at: float
    parts: int = 1
    """Stored rows merged into this one: the parts of a window from several intake workers (hub.ingest.parts)."""


class Aggregates:
    """Stores batches of window results and queries them; storing marks the devices seen."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._devices = Devices(store)
        self._prepared: _Statements | None = None

    def store_batch(self, device: str, records: Sequence[SequencedResult], *, now: float | None = None) -> list[int]:
        """Store ``records`` of ``device`` in one transaction; return the sequences now durable.

        A window id already stored with the same content is skipped (a result delivered twice is stored once)
        and still counts as durable, so its sequence is returned and can be acked again. One stored with other
        content is a conflict: refused, so its sequence is not returned (:meth:`insert_batches`).
        """
        if not records:
            return []
        with self._store.transaction("store_batch") as session:
            refused = self.insert_batches(session, [(device, records)], time.time() if now is None else now)
        return [rec.seq for rec in records if rec.seq not in refused[0]]

    def insert_batches(
        self, session: Session, batches: Sequence[tuple[str, Sequence[SequencedResult]]], now: float
    ) -> list[dict[int, str]]:
        """Insert the records of several devices' batches and mark those devices seen, within ``session``;
        per batch, the sequences refused (``{seq: reason}``, reason ``conflict``), which were not stored.

        The statements are compiled once (:class:`_Statements`): building a multi-row ``VALUES`` per batch
        made SQLAlchemy compile it anew every time (most of the hub's ingest CPU, docs/performance.md). Stored
        hashes are read back only when the insert skipped rows (the statements' rowcount is the rows inserted),
        so a batch of new windows costs no query more.
        """
        statements = self._statements()
        order = statements.columns
        rows = []
        offered: list[Offered] = []
        for index, (device, records) in enumerate(batches):
            for rec in records:
                result = rec.result
                digest = content_hash(result)
                offered.append(Offered(index, rec.seq, result.id, device, digest))
                row = {
                    "window_id": result.id,
                    "device": device,
                    "subscription": result.subscription,
                    "revision": result.revision,
                    "group": result.group,
                    "window_start": result.window_start,
                    "window_end": result.window_end,
                    "part": result.part,
                    "events": result.events,
                    "fields": _FIELDS_JSON.dump_json(result.fields).decode(),
                    "stats": orjson.dumps(result.stats).decode(),
                    "stored_at": now,
                    "content_hash": digest,
                }
                rows.append(tuple(row[name] for name in order))
        refused: list[dict[int, str]] = [{} for _ in batches]
        if not rows:
            return refused
        connection = session.connection()
        # The driver's own execution of SQL compiled once, JSON already text: SQLAlchemy's per-row parameter
        # processing cost more than SQLite's insert itself (docs/performance.md).
        inserted = 0
        if statements.insert_arrays is not None:
            # PostgreSQL: every row in one statement, a column array a parameter, sent in binary (%b). psycopg's
            # executemany of a one-row INSERT cost about 10 us a row in the driver, arrays in text form 18 (their
            # literal is built and quoted in Python), in binary about 1.3 (a micro-benchmark of 2,000 rows).
            columns = tuple(list(values) for values in zip(*rows, strict=True))
            inserted = connection.exec_driver_sql(statements.insert_arrays, columns).rowcount
        else:
            # SQLite: rows in multi-row VALUES, not executemany. The sqlite3 module lets go of the GIL for each
            # statement step, and from a worker thread that meant a GIL handover per row with the event loop
            # (parsing the next messages) holding it in between: a convoy that cost a third of ingest's CPU.
            at = 0
            for size in _chunk_sizes(len(rows)):
                flat = tuple(value for row in rows[at : at + size] for value in row)
                inserted += connection.exec_driver_sql(statements.insert_rows[size], flat).rowcount
                at += size
        if not 0 <= inserted == len(rows):  # some ids were stored already (or the driver could not say)
            for index, seqs in refuse_conflicts(session, offered, now).items():
                refused[index] = seqs
        self._devices.touch(session, [DeviceSeen(device, now) for device in dict.fromkeys(d for d, _ in batches)])
        return refused

    def query(
        self,
        device: str | None = None,
        subscription: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 100,
        *,
        devices: Sequence[str] | None = None,
        group: str | None = None,
    ) -> list[StoredAggregate]:
        """Windows that started in ``[since, until)``, newest first, at most ``limit`` (None: all); the parts of
        a window (several intake workers) come merged into one (:mod:`hub.ingest.parts`).

        ``devices`` restricts to those ids (a label selector's devices); ``group`` to one group key.
        """
        stmt = select(AggregateRow)
        if device is not None:
            stmt = stmt.where(AggregateRow.device == device)
        if devices is not None:
            stmt = stmt.where(AggregateRow.device.in_(list(devices)))
        if subscription is not None:
            stmt = stmt.where(AggregateRow.subscription == subscription)
        if group is not None:
            stmt = stmt.where(AggregateRow.group == group)
        if since is not None:
            stmt = stmt.where(AggregateRow.window_start >= since)
        if until is not None:
            stmt = stmt.where(AggregateRow.window_start < until)
        ordered = stmt.order_by(AggregateRow.window_start.desc(), AggregateRow.window_id)
        with self._store.transaction("query_aggregates") as session:
            if limit is None:
                return merge_parts([_to_aggregate(row) for row in session.scalars(ordered)])
            fetch = limit
            while True:
                rows = [_to_aggregate(row) for row in session.scalars(ordered.limit(fetch))]
                if len(rows) < fetch:
                    return merge_parts(rows)[:limit]
                # The limit may have cut the oldest start's windows between their parts: read that start whole.
                oldest = rows[-1].window_start
                rest = session.scalars(ordered.where(AggregateRow.window_start == oldest))
                merged = merge_parts([r for r in rows if r.window_start != oldest] + [_to_aggregate(r) for r in rest])
                if len(merged) >= limit:
                    return merged[:limit]
                fetch *= 2

    def _statements(self) -> _Statements:
        if self._prepared is None:
            self._prepared = _Statements.build(self._store)
        return self._prepared


@dataclass(frozen=True, slots=True)
class _Statements:
    """The aggregates INSERT, compiled once for the store's dialect."""

    columns: tuple[str, ...]
    """The order of a row's values."""
    insert_rows: dict[int, str]
    """SQLite: the INSERT of n rows in one ``VALUES`` list, for each size :func:`_chunk_sizes` uses."""
    insert_arrays: str | None
    """PostgreSQL: the INSERT of any number of rows from one array per column (``unnest``)."""

    @classmethod
    def build(cls, store: Store) -> _Statements:
        table = AggregateRow.__table__
        if store.dialect.name == "postgresql":
            columns = tuple(column.name for column in table.columns)
            return cls(columns=columns, insert_rows={}, insert_arrays=_unnest_insert(store))
        compiled = store.insert(table).on_conflict_do_nothing().compile(dialect=store.dialect)
        if not compiled.positional or not compiled.positiontup:
            raise StoreError("insert", f"expected positional parameters from {store.dialect.name}")
        head, values, tail = _split_values(compiled.string)
        rows = {n: head + ", ".join([values] * n) + tail for n in _chunk_sizes(2 * ROWS_PER_STATEMENT - 1)}
        return cls(columns=tuple(compiled.positiontup), insert_rows=rows, insert_arrays=None)


def _unnest_insert(store: Store) -> str:
    """``INSERT INTO aggregates (...) SELECT * FROM unnest(%b::TEXT[], ...) ON CONFLICT (window_id) DO NOTHING``:
    each parameter one column's values as a binary array of the column's type (JSONB cast from the JSON text)."""
    table = AggregateRow.__table__
    quote = store.dialect.identifier_preparer.quote
    names = ", ".join(quote(column.name) for column in table.columns)
    arrays = ", ".join(f"%b::{column.type.compile(dialect=store.dialect)}[]" for column in table.columns)
    key = ", ".join(quote(column.name) for column in table.columns if column.primary_key)
    # Names and types from the table metadata, values as parameters: no input reaches the SQL text.
    name = quote(AggregateRow.__tablename__)
    return f"INSERT INTO {name} ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT ({key}) DO NOTHING"  # noqa: S608


ROWS_PER_STATEMENT = 256
"""Rows per multi-row INSERT on SQLite: 3,072 parameters, well below its limit of 32,766."""


def _chunk_sizes(count: int) -> list[int]:
    """Full statements, then the rest in powers of two: at most nine distinct statements to prepare and cache."""
    sizes = [ROWS_PER_STATEMENT] * (count // ROWS_PER_STATEMENT)
    rest = count % ROWS_PER_STATEMENT
    bit = ROWS_PER_STATEMENT // 2
    while rest:
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
        bit //= 2
    return sizes


def _split_values(single_row: str) -> tuple[str, str, str]:
    """Split a one-row INSERT at its ``VALUES`` tuple: (what precedes it, the tuple, what follows)."""
    head, sep, rest = single_row.partition(" VALUES ")
    close = rest.index(")") + 1
    values, tail = rest[:close], rest[close:]
    if not sep or not values.startswith("(") or "(" in values[1:]:
        raise StoreError("insert", f"unexpected form of the compiled insert: {single_row!r}")
    return head + sep, values, tail


def _to_aggregate(row: AggregateRow) -> StoredAggregate:
    return StoredAggregate(
        window_id=row.window_id,
        device=row.device,
        subscription=row.subscription,
        revision=row.revision,
        group=row.group,
        window_start=row.window_start,
        window_end=row.window_end,
        part=row.part,
        events=row.events,
        fields={name: FieldState.model_validate(state) for name, state in row.fields.items()},
        stats=list(row.stats),
        stored_at=row.stored_at,
    )


# -- the parts of a window ------------------------------------------------------------------------------
# A subscription on several intake workers stores one row per worker's part (each its own window id, stored
# exactly once); queries show them merged as one window. Parts share device, subscription, revision, group,
# start and end, and differ only in ``part`` (the id's last segment). They merge through their mergeable state,
# so the merged window's count, sum, min, max, mean, stddev and sketch quantiles are the unsplit window's. The
# merged row keeps the lowest part and an id ending in the parts it holds (``.../0+1``); ``parts`` counts them.

_Key = tuple[str, str, str, str, float, float]


def merge_parts(rows: Sequence[StoredAggregate]) -> list[StoredAggregate]:
    """``rows`` with the parts of each window merged into one, in the order of each window's first row."""
    windows: dict[_Key, list[StoredAggregate]] = {}
    for row in rows:
        key = (row.device, row.subscription, row.revision, row.group, row.window_start, row.window_end)
        windows.setdefault(key, []).append(row)
    return [parts[0] if len(parts) == 1 else _merged(parts) for parts in windows.values()]


def _merged(parts: list[StoredAggregate]) -> StoredAggregate:
    parts = sorted(parts, key=lambda r: r.part)
    fields: dict[str, FieldState] = {}
    for row in parts:
        for name, state in row.fields.items():
            fields[name] = fields[name].merge(state) if name in fields else state
    stats: list[str] = []
    for row in parts:
        stats.extend(stat for stat in row.stats if stat not in stats)
    prefix = parts[0].window_id.rsplit("/", 1)[0]
    return dataclasses.replace(
        parts[0],
        window_id=f"{prefix}/{'+'.join(str(r.part) for r in parts)}",
        events=sum(r.events for r in parts),
        fields=fields,
        stats=stats,
        stored_at=max(r.stored_at for r in parts),
        parts=sum(r.parts for r in parts),
    )
