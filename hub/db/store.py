"""The hub's SQL store (SQLAlchemy 2): aggregates stored once per window id, and the devices seen.

Blocking by design: async callers go through ``asyncio.to_thread``. The same code runs on SQLite (default,
one hub) and PostgreSQL (several hub replicas). Schema changes will need migrations once a release is out;
until then ``create_all`` builds the tables.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from pydantic import TypeAdapter
from sqlalchemy import Engine, case, create_engine, event, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from edge_protocol.aggregate import FieldState
from edge_protocol.messages import SequencedResult
from hub.db.records import DeviceInfo, StoredAggregate
from hub.db.tables import AggregateRow, Base, DeviceRow
from hub.errors import StoreConflict, StoreError
from hub.fleet.labels import Selector

log = logging.getLogger(__name__)

_FIELDS_JSON: TypeAdapter[dict[str, FieldState]] = TypeAdapter(dict[str, FieldState])

BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite writer waits for another one (a second hub process, a backup) before failing."""


class _State(Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL: the API reads while ingest writes. synchronous=FULL fsyncs the WAL on every commit: NORMAL
        # already survives kill -9 (the OS keeps the written WAL pages), but not a power cut or kernel
        # crash, and our ack makes the agent delete its copy; so a commit must reach the disk before we ack.
        # One fsync per batch, not per record, keeps this cheap.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")  # SQLite enforces REFERENCES only when asked, per connection
    finally:
        cursor.close()


class Store:
    """Aggregates and devices in a SQL database. States: new -> open -> closed; reopening raises."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._state = _State.NEW
        self._engine: Engine | None = None
        self._prepared: _Statements | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def open(self) -> Store:
        """Connect and create missing tables."""
        if self._state is not _State.NEW:
            raise StoreError("open", f"the store is {self._state.value}; a store opens once")
        try:
            engine = create_engine(self.url, pool_pre_ping=True, json_serializer=_json_text)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            Base.metadata.create_all(engine)
            _add_labels_column(engine)
        except SQLAlchemyError as exc:
            raise StoreError("open", f"{self.display_url}: {exc}") from exc
        self._engine = engine
        self._state = _State.OPEN
        return self

    def close(self) -> None:
        """Release every connection; idempotent."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._state = _State.CLOSED

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Store:
        return await asyncio.to_thread(self.open)

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.to_thread(self.close)

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except SQLAlchemyError:
            return "<unparsable store url>"

    @contextmanager
    def transaction(self, operation: str) -> Iterator[Session]:
        """A session in one transaction, committed on exit, for the hub's SQL modules (catalog, fleet, desired).

        Database errors become StoreError; a write refused by a constraint becomes StoreConflict.
        """
        if self._engine is None:
            raise StoreError(operation, f"the store is {self._state.value}")
        try:
            with Session(self._engine) as session, session.begin():
                yield session
        except IntegrityError as exc:
            raise StoreConflict(operation, str(exc.orig).splitlines()[0]) from exc
        except SQLAlchemyError as exc:
            raise StoreError(operation, str(exc).splitlines()[0]) from exc

    def insert(self, table: Any) -> Any:
        """``INSERT`` for this database, with ``on_conflict_do_nothing``/``on_conflict_do_update``."""
        # ON CONFLICT is dialect-specific SQL, but both dialects spell the construct the same way.
        assert self._engine is not None
        name = self._engine.dialect.name
        if name == "sqlite":
            return sqlite.insert(table)
        if name == "postgresql":
            return postgresql.insert(table)
        raise StoreError("insert", f"unsupported database {name!r}: use SQLite or PostgreSQL")

    # -- writes ----------------------------------------------------------------------------------------------

    def store_batch(self, device: str, records: Sequence[SequencedResult], *, now: float | None = None) -> list[int]:
        """Store ``records`` of ``device`` in one transaction; return the sequences now durable.

        A window id already stored is skipped (a result delivered twice is stored once) and still counts as
        durable, so its sequence is returned and can be acked again.
        """
        if not records:
            return []
        with self.transaction("store_batch") as session:
            self.insert_batches(session, [(device, records)], time.time() if now is None else now)
        return [rec.seq for rec in records]

    def insert_batches(
        self, session: Session, batches: Sequence[tuple[str, Sequence[SequencedResult]]], now: float
    ) -> None:
        """Insert the records of several devices' batches and mark those devices seen, within ``session``.

        The statements are compiled once per store (:class:`_Statements`): building a multi-row ``VALUES`` per
        batch made SQLAlchemy compile it anew every time (most of the hub's ingest CPU, docs/performance.md).
        """
        statements = self._statements()
        order = statements.aggregate_columns
        rows = []
        for device, records in batches:
            for rec in records:
                result = rec.result
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
                }
                rows.append(tuple(row[name] for name in order) if order else row)
        if not rows:
            return
        connection = session.connection()
        # The driver's own execution of SQL compiled once, JSON already text: SQLAlchemy's per-row parameter
        # processing cost more than SQLite's insert itself (docs/performance.md).
        if order is None:
            connection.exec_driver_sql(statements.insert_aggregates, rows)
        else:
            # SQLite: rows in multi-row VALUES, not executemany. The sqlite3 module lets go of the GIL for each
            # statement step, and from a worker thread that meant a GIL handover per row with the event loop
            # (parsing the next messages) holding it in between: a convoy that cost a third of ingest's CPU.
            at = 0
            for size in _chunk_sizes(len(rows)):
                flat = tuple(value for row in rows[at : at + size] for value in row)
                connection.exec_driver_sql(statements.insert_rows[size], flat)
                at += size
        self.touch_devices(session, [DeviceSeen(device, now) for device in dict.fromkeys(d for d, _ in batches)])

    def _statements(self) -> _Statements:
        if self._prepared is None:
            assert self._engine is not None
            self._prepared = _Statements.build(self, self._engine)
        return self._prepared

    def record_status(self, device: str, *, online: bool, agent_version: str, seen_at: float) -> None:
        """Apply a status message: online/offline, agent version, and ``last_seen`` (never moves back)."""
        with self.transaction("record_status") as session:
            self.touch_device(session, device, seen_at, online=online, agent_version=agent_version)

    def touch_device(
        self, session: Session, device: str, seen_at: float, *, online: bool | None, agent_version: str | None
    ) -> None:
        """One device seen at ``seen_at`` (see :meth:`touch_devices`)."""
        self.touch_devices(session, [DeviceSeen(device, seen_at, online, agent_version or "")])

    def touch_devices(self, session: Session, seen: Sequence[DeviceSeen]) -> None:
        """Upsert devices as seen, in order: ``last_seen`` never moves back, ``first_seen`` never forward.

        One statement per device, so two hub replicas seeing the same new device cannot collide; executemany
        of statements built once (building one per message was a tenth of ingest's CPU).
        """
        statements = self._statements()
        connection = session.connection()
        for online_known, statement in ((False, statements.touch_seen), (True, statements.touch_status)):
            rows = [
                {
                    "id": s.device,
                    "first_seen": s.seen_at,
                    "last_seen": s.seen_at,
                    "online": True if s.online is None else s.online,  # a device sending aggregates is up
                    "agent_version": s.agent_version,
                    "labels": {},
                }
                for s in seen
                if (s.online is not None) == online_known
            ]
            if rows:
                connection.execute(statement, rows)

    # -- reads -----------------------------------------------------------------------------------------------

    def query_aggregates(
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
        """Windows that started in ``[since, until)``, newest first, at most ``limit`` (None: all).

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
        stmt = stmt.order_by(AggregateRow.window_start.desc(), AggregateRow.window_id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.transaction("query_aggregates") as session:
            return [_to_aggregate(row) for row in session.scalars(stmt)]

    def list_devices(self, selector: Selector | None = None) -> list[DeviceInfo]:
        """Every device seen whose labels match ``selector`` (all of them without one), by id."""
        with self.transaction("list_devices") as session:
            rows = session.scalars(select(DeviceRow).order_by(DeviceRow.id))
            devices = [
                DeviceInfo(r.id, r.first_seen, r.last_seen, r.online, r.agent_version, dict(r.labels or {}))
                for r in rows
            ]
        # Matched here, not in SQL: JSON operators differ between SQLite and PostgreSQL, and fleets are small.
        return [dev for dev in devices if selector is None or selector.matches(dev.labels)]

    def update_labels(self, device: str, set_: Mapping[str, str], remove: Sequence[str] = ()) -> dict[str, str] | None:
        """Set then remove labels of a known device; its labels afterwards, or None for an unknown device."""
        with self.transaction("update_labels") as session:
            row = session.get(DeviceRow, device, with_for_update=True)
            if row is None:
                return None
            labels = dict(row.labels or {})
            labels.update(set_)
            for key in remove:
                labels.pop(key, None)
            row.labels = labels  # a new object, so the ORM sees the JSON change
            return labels

    def ping(self) -> None:
        """Raise StoreError unless the database answers."""
        with self.transaction("ping") as session:
            session.execute(text("SELECT 1"))


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
class _Statements:
    """Ingest's statements, built once per store: executemany reuses their compiled form."""

    insert_aggregates: str
    aggregate_columns: tuple[str, ...] | None
    """The parameter order of a positional paramstyle (SQLite's ``?``); None for named ones (psycopg's)."""
    insert_rows: dict[int, str]
    """Positional only: the INSERT of n rows in one ``VALUES`` list, for each size :func:`_chunk_sizes` uses."""
    touch_seen: Any
    touch_status: Any

    @classmethod
    def build(cls, store: Store, engine: Engine) -> _Statements:
        compiled = store.insert(AggregateRow.__table__).on_conflict_do_nothing().compile(dialect=engine.dialect)
        order = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None
        rows: dict[int, str] = {}
        if order is not None:
            head, values, tail = _split_values(compiled.string)
            rows = {n: head + ", ".join([values] * n) + tail for n in _chunk_sizes(2 * ROWS_PER_STATEMENT - 1)}
        devices = DeviceRow.__table__
        touch = store.insert(devices)
        excluded = touch.excluded
        seen = {
            "last_seen": _greatest(devices.c.last_seen, excluded.last_seen),
            "first_seen": _least(devices.c.first_seen, excluded.first_seen),
            "agent_version": case(
                (excluded.agent_version != "", excluded.agent_version), else_=devices.c.agent_version
            ),
        }
        return cls(
            insert_aggregates=compiled.string,
            aggregate_columns=order,
            insert_rows=rows,
            touch_seen=touch.on_conflict_do_update(index_elements=[devices.c.id], set_=seen),
            touch_status=touch.on_conflict_do_update(
                index_elements=[devices.c.id], set_={**seen, "online": excluded.online}
            ),
        )


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


def _json_text(value: Any) -> str:
    # orjson: field states are most of what ingest writes, and stdlib json was 6% of its CPU.
    return orjson.dumps(value).decode()


def _add_labels_column(engine: Engine) -> None:
    # create_all adds tables, not columns: a database from before device labels gets the column here (the one
    # schema change before migrations exist).
    if "labels" in {col["name"] for col in inspect(engine).get_columns("devices")}:
        return
    kind = "JSONB" if engine.dialect.name == "postgresql" else "JSON"
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE devices ADD COLUMN labels {kind}"))


def _greatest(column: Any, value: Any) -> Any:
    # GREATEST/MAX(a, b) differ between dialects; CASE is portable.
    return case((value > column, value), else_=column)


def _least(column: Any, value: Any) -> Any:
    return case((value < column, value), else_=column)


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
