"""The hub's SQL store (SQLAlchemy 2): the engine, its schema, and the transactions every concern writes in.

Each table's reads and writes live with the concern that owns it (aggregates: :mod:`hub.ingest.aggregates`,
devices: :mod:`hub.fleet.devices`, the catalog, releases, rollouts...); they all open their transactions here.

Blocking by design: async callers go through ``asyncio.to_thread``. The same code runs on SQLite (default,
one hub) and PostgreSQL (several hub replicas). The schema is Alembic's (:mod:`hub.db.migrations`): opening a
store migrates its database to the newest revision, under a lock that several replicas starting at once share.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from sqlalchemy import Engine, case, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from hub.errors import StoreConflict, StoreError

if TYPE_CHECKING:
    from hub.db.migrations import Upgrade

log = logging.getLogger(__name__)

T = TypeVar("T")

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
    """A SQL database holding the hub's tables. States: new -> open -> closed; reopening raises."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.migrate = migrate
        self._state = _State.NEW
        self._engine: Engine | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def open(self) -> Store:
        """Connect and migrate the schema to the newest revision (``migrate=False``: check that it is there)."""
        # Here, not at the top: Alembic loads when a store opens, not for every import of the hub's modules.
        from hub.db import migrations

        if self._state is not _State.NEW:
            raise StoreError("open", f"the store is {self._state.value}; a store opens once")
        engine: Engine | None = None
        try:
            engine = _create_engine(self.url)
            if self.migrate:
                migrations.upgrade(engine)
            else:
                migrations.require_head(engine)
        except (SQLAlchemyError, StoreError) as exc:
            if engine is not None:
                engine.dispose()
            if isinstance(exc, StoreError):
                raise
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
        return _display(self.url)

    @property
    def dialect(self) -> Dialect:
        """The open database's SQL dialect, to compile a statement once (see :mod:`hub.ingest.aggregates`)."""
        if self._engine is None:
            raise StoreError("dialect", f"the store is {self._state.value}")
        return self._engine.dialect

    @contextmanager
    def transaction(self, operation: str) -> Iterator[Session]:
        """A session in one transaction, committed on exit, for the hub's SQL modules (ingest, fleet, catalog...).

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
        name = self.dialect.name
        if name == "sqlite":
            return sqlite.insert(table)
        if name == "postgresql":
            return postgresql.insert(table)
        raise StoreError("insert", f"unsupported database {name!r}: use SQLite or PostgreSQL")

    def ping(self) -> None:
        """Raise StoreError unless the database answers."""
        with self.transaction("ping") as session:
            session.execute(text("SELECT 1"))


def migrate(url: str) -> Upgrade:
    """Migrate the database at ``url`` to the newest revision without opening a store (``hub db upgrade``)."""
    from hub.db import migrations

    return _with_engine(url, "migrate", migrations.upgrade)


def revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: empty, or built before migrations)."""
    from hub.db import migrations

    return _with_engine(url, "revision", migrations.current)


def _with_engine(url: str, operation: str, run: Callable[[Engine], T]) -> T:
    engine: Engine | None = None
    try:
        engine = _create_engine(url)
        return run(engine)
    except SQLAlchemyError as exc:
        raise StoreError(operation, f"{_display(url)}: {exc}") from exc
    finally:
        if engine is not None:
            engine.dispose()


def _create_engine(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True, json_serializer=_json_text)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _display(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return "<unparsable store url>"


def _json_text(value: Any) -> str:
    # orjson: field states are most of what ingest writes, and stdlib json was 6% of its CPU.
    return orjson.dumps(value).decode()


def greatest(column: Any, value: Any) -> Any:
    """The larger of ``column`` and ``value``, in SQL that both dialects run."""
    # GREATEST/MAX(a, b) differ between dialects; CASE is portable.
    return case((value > column, value), else_=column)


def least(column: Any, value: Any) -> Any:
    """The smaller of ``column`` and ``value``, in SQL that both dialects run."""
    return case((value < column, value), else_=column)
