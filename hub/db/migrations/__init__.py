"""Schema migrations (Alembic), shipped in the package: ``versions/`` holds one revision per schema change.

:func:`upgrade` brings a database to the newest revision; ``hub serve`` runs it when the store opens (unless
``[store] migrate = false``) and ``hub db upgrade`` runs it on its own. Several replicas may start at once:
each takes the schema lock first (PostgreSQL: an advisory lock held by the migration's transaction; SQLite:
``BEGIN IMMEDIATE``, the database file's write lock), so one migrates and the others, once they get the lock,
find the database at head and do nothing. The whole upgrade is one transaction on both databases (their DDL is
transactional): a failed migration leaves the schema as it was.

A database built by the hub before migrations existed (``create_all``, no ``alembic_version`` table) is
stamped at the revision its tables and columns show (the baseline is the previous release's schema), then
upgraded from there.

New revision (developers): change :mod:`hub.db.tables`, then ``python -m hub.db.migrations revision "what"``
drafts the next file in ``versions/`` from the difference; edit it, and tests/unit/hub/test_migrations.py checks
that the migrated schema equals the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect, text

from hub.db.migrations import baseline
from hub.errors import StoreError

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).resolve().parent
"""Alembic's script location: env.py, script.py.mako and versions/."""

PG_LOCK_KEY = int.from_bytes(b"edgefmig", "big")
"""The PostgreSQL advisory lock key (a fixed bigint) every replica takes before it looks at the schema."""

BASELINE = "0001"

_BASELINE_TABLES = frozenset(baseline.metadata.tables)
"""The tables of the previous release."""


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code (no alembic.ini): the scripts in this package, on ``connection``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def head() -> str:
    """The newest revision shipped."""
    found = ScriptDirectory.from_config(config()).get_current_head()
    if found is None:
        raise StoreError("migrate", f"no migration found in {SCRIPTS}")
    return found


def current(engine: Engine) -> str | None:
    """The database's revision; None when it has none (empty, or built before migrations)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` did: the revision found (after stamping a database from before migrations) and
    the one left."""

    before: str | None
    after: str
    stamped: bool = False

    @property
    def changed(self) -> bool:
        return self.stamped or self.before != self.after


def upgrade(engine: Engine, target: str = "head") -> Upgrade:
    """Bring the database to ``target`` under the schema lock, in one transaction."""
    with engine.connect() as conn, _schema_lock(conn):
        before = MigrationContext.configure(conn).get_current_revision()
        stamped = False
        cfg = config(conn)
        try:
            if before is None:
                before = _legacy_revision(conn)
                if before is not None:
                    command.stamp(cfg, before)
                    stamped = True
                    log.info("database from before migrations: stamped at revision %s (its tables and columns)", before)
            command.upgrade(cfg, target)
        except CommandError as exc:  # an unknown revision (a newer hub's database), a broken script directory
            raise StoreError("migrate", str(exc)) from exc
        after = MigrationContext.configure(conn).get_current_revision()
        conn.commit()
    if after is None:  # pragma: no cover - alembic writes the version it reached
        raise StoreError("migrate", "no revision recorded after the upgrade")
    done = Upgrade(before, after, stamped)
    if done.changed:
        log.info("schema migrated: %s -> %s", before or "empty", after)
    return done


def downgrade(engine: Engine, target: str) -> None:
    """Take the database back to ``target`` (tests, development: a hub does not run older schemas)."""
    with engine.connect() as conn, _schema_lock(conn):
        command.downgrade(config(conn), target)
        conn.commit()


def require_head(engine: Engine) -> None:
    """Raise StoreError unless the database is at the newest revision (a hub that does not migrate itself)."""
    found = current(engine)
    if found != head():
        raise StoreError(
            "open", f"the schema is at revision {found or 'none'}, this hub needs {head()}: run `hub db upgrade`"
        )


@contextmanager
def _schema_lock(conn: Connection) -> Iterator[None]:
    # Taken at the start of the migration's transaction and released by its commit or rollback.
    dialect = conn.dialect.name
    if dialect == "postgresql":
        if not conn.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY}).scalar():
            log.info("another hub is migrating the schema: waiting for it")
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    elif dialect == "sqlite":
        # pysqlite opens transactions only before DML; an explicit BEGIN makes the DDL transactional too, and
        # IMMEDIATE takes the write lock now (another process waits up to its busy_timeout).
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise


# What the hub's create_all (before migrations) left in a database, per revision, oldest first.
_Marker = Callable[[set[str], Callable[[str], set[str]]], bool]
_LEGACY: tuple[tuple[str, _Marker], ...] = (
    (BASELINE, lambda tables, _columns: tables >= _BASELINE_TABLES),
    ("0002", lambda tables, _columns: "api_lock" in tables),
    ("0003", lambda tables, columns: "refused_windows" in tables and "content_hash" in columns("aggregates")),
    ("0004", lambda _tables, columns: {"run", "seq"} <= columns("reported")),
    ("0005", lambda tables, _columns: "leases" in tables),  # for a database of a development build
)


def _legacy_revision(conn: Connection) -> str | None:
    """The revision a database without ``alembic_version`` is at: None if it holds no hub table."""
    if not set(inspect(conn).get_table_names()) & _BASELINE_TABLES:
        return None
    # What the previous release did when it opened a database: create the tables it lacks (one older still),
    # and add the column that came after them.
    baseline.metadata.create_all(conn, checkfirst=True)
    tables = set(inspect(conn).get_table_names())

    def columns(table: str) -> set[str]:
        return {col["name"] for col in inspect(conn).get_columns(table)}

    if "labels" not in columns("devices"):
        kind = "JSONB" if conn.dialect.name == "postgresql" else "JSON"
        conn.execute(text(f"ALTER TABLE devices ADD COLUMN labels {kind}"))
    revision: str | None = None
    gap = False
    for rev, present in _LEGACY:
        if present(tables, columns):
            if gap:
                raise StoreError(
                    "migrate", f"the database has the schema of revision {rev} but not of the ones before it"
                )
            revision = rev
        else:
            gap = True
    return revision
