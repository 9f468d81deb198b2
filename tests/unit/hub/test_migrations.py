"""Schema migrations (hub.db.migrations): the migrated schema is the tables', a database of the previous release
(or of any build before migrations) is stamped and upgraded with its rows kept, replicas migrate one at a time.

On SQLite, and on PostgreSQL (a fresh database per test) when EDGEFLEET_TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, MetaData, create_engine, inspect, select, text
from typer.testing import CliRunner

from edge_protocol.messages import Reported
from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from hub.cli.app import app
from hub.db import migrations
from hub.db.migrations import baseline
from hub.db.store import Store, migrate
from hub.db.tables import Base
from hub.desired.catalog import Catalog
from hub.desired.documents import DesiredStore
from hub.desired.releases import Releases
from hub.errors import StoreError
from hub.fleet.devices import Devices
from hub.fleet.labels import Selector
from hub.fleet.registry import Fleet
from hub.ingest.aggregates import Aggregates
from hub.ingest.conflicts import Refusals
from hub.rollouts.plan import Limits
from hub.rollouts.store import RolloutStore
from hub.security.tokens import Tokens
from tests.support.postgres_db import database_url
from tests.unit.hub.factories import record, reported

PREVIOUS_RELEASE = "6b1c255"
REPO = Path(__file__).resolve().parents[3]
SCRIPTS = ScriptDirectory.from_config(migrations.config())
REVISIONS = [script.revision for script in reversed(list(SCRIPTS.walk_revisions()))]


# -- databases ------------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL database when EDGEFLEET_TEST_POSTGRES_URL is set."""
    with database_url(request.param, tmp_path) as url:
        yield url


@contextlib.contextmanager
def engine_of(url: str) -> Iterator[Engine]:
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def differences(engine: Engine, metadata: MetaData = Base.metadata) -> list[Any]:
    """Alembic's autogenerate comparison of the database with ``metadata``: empty when they match."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, metadata))


def version_rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def as_built_before_migrations(url: str, revision: str) -> None:
    """The database a hub build before migrations left: the schema of ``revision``, no alembic_version."""
    with engine_of(url) as engine:
        migrations.upgrade(engine, revision)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE alembic_version"))


# -- the schema -----------------------------------------------------------------------------------------------


def test_the_revisions_are_one_line_numbered_from_the_baseline() -> None:
    assert [f"{n:04d}" for n in range(1, len(REVISIONS) + 1)] == REVISIONS
    assert migrations.head() == REVISIONS[-1]


def test_the_migrations_build_exactly_the_tables(db_url: str) -> None:
    with engine_of(db_url) as engine:
        done = migrations.upgrade(engine)
        assert (done.before, done.after, done.stamped) == (None, migrations.head(), False)
        assert differences(engine) == []  # a column in tables.py without a migration fails here
        assert version_rows(engine) == [migrations.head()]


def previous_release_tables() -> MetaData:
    """hub/tables.py of the previous release, loaded from git."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{PREVIOUS_RELEASE}:hub/tables.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs git and commit {PREVIOUS_RELEASE}")
    module = types.ModuleType("previous_release_tables")
    sys.modules[module.__name__] = module  # the declarative base resolves its annotations there
    try:
        exec(compile(source, f"{PREVIOUS_RELEASE}:hub/tables.py", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    metadata: MetaData = module.Base.metadata
    return metadata


def test_the_baseline_is_the_previous_release_schema(tmp_path: Path) -> None:
    old = previous_release_tables()
    with engine_of(f"sqlite:///{tmp_path / 'hub.db'}") as engine:
        migrations.upgrade(engine, "0001")
        assert differences(engine, old) == []
    with engine_of(f"sqlite:///{tmp_path / 'old.db'}") as engine:
        old.create_all(engine)
        assert differences(engine, baseline.metadata) == []


# -- a database from before migrations ------------------------------------------------------------------------


def populated_by_the_hub(url: str) -> str:
    """Write a bit of everything through the hub's own modules; returns the API token created."""
    now = 1000.0
    with Store(url) as store:
        for device, site in [("dev-a", "lab"), ("dev-b", "plant")]:
            Devices(store).record_status(device, online=True, agent_version="0.3.0", seen_at=now)
            Devices(store).update_labels(device, {"site": site})
        catalog = Catalog(store, clock=lambda: now)
        catalog.put_handler(HandlerSpec(name="temp-c", image="edgefleet/temp-c@sha256:" + "a" * 64), replace=False)
        catalog.put_subscription(
            SubscriptionSpec(name="temp", topic="sensors/#", handler="temp-c"), Selector(), replace=False
        )
        Releases(store, clock=lambda: now).add("temp-c", "1.1", "registry/temp-c@sha256:" + "b" * 64, "temp-c:1.1")
        DesiredStore(store, Ed25519PrivateKey.generate(), clock=lambda: now).recompile()
        RolloutStore(store, clock=lambda: now).create("temp-c", "1.1", Selector.parse(["site=lab"]), Limits())
        assert Aggregates(store).store_batch("dev-a", [record(1, start=0.0), record(2, start=10.0)], now=now)
        Fleet(store).record_reported(reported("dev-a", applied=1), seen_at=now, received_at=now)
        token, _ = Tokens(store).create("ops", now=now)
    return token


def copy_into_previous_release_schema(source: str, target: str) -> dict[str, list[dict[str, Any]]]:
    """Build the previous release's schema at ``target`` and copy the rows of ``source`` into it (the columns
    that release had): the database that release would have written. Returns the rows per table."""
    copied: dict[str, list[dict[str, Any]]] = {}
    with engine_of(source) as src, engine_of(target) as dst:
        baseline.metadata.create_all(dst)
        with src.connect() as read, dst.begin() as write:
            for table in baseline.metadata.sorted_tables:
                rows = [dict(row._mapping) for row in read.execute(select(*table.columns))]
                if rows:
                    write.execute(table.insert(), rows)
                copied[table.name] = rows
            if dst.dialect.name == "postgresql":  # as inserts by the hub would have left the sequences
                for table in ("releases", "rollouts", "device_credentials"):
                    write.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                            f" COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                        )
                    )
    return copied


def baseline_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    with engine_of(url) as engine, engine.connect() as conn:
        return {
            table.name: [dict(row._mapping) for row in conn.execute(select(*table.columns))]
            for table in baseline.metadata.sorted_tables
        }


def test_a_database_of_the_previous_release_is_upgraded_with_its_rows(db_url: str, tmp_path: Path) -> None:
    scratch = f"sqlite:///{tmp_path / 'scratch.db'}"
    token = populated_by_the_hub(scratch)
    before = copy_into_previous_release_schema(scratch, db_url)
    assert all(before[name] for name in ("devices", "aggregates", "desired", "rollouts", "rollout_devices"))

    with Store(db_url) as store:  # what `hub serve` does at start
        with engine_of(db_url) as engine:
            assert version_rows(engine) == [migrations.head()]
            assert differences(engine) == []
        assert baseline_rows(db_url) == before  # every row of the previous release, as it was

        # The old rows through the store's normal reads.
        assert {d.id: d.labels for d in Devices(store).all()} == {"dev-a": {"site": "lab"}, "dev-b": {"site": "plant"}}
        assert sorted(a.window_start for a in Aggregates(store).query()) == [0.0, 10.0]
        rollout = RolloutStore(store).all()[0]
        assert rollout.handler == "temp-c"
        assert Tokens(store).check(token) is True

        # The new columns and tables at work on the old rows.
        with store.transaction("test") as session:
            assert session.execute(text("SELECT content_hash FROM aggregates")).scalars().all() == [None, None]
        assert Aggregates(store).store_batch("dev-a", [record(3, start=0.0)]) == [3]  # a redelivery: acked
        other = record(4, start=10.0, values=(9.0,))
        assert Aggregates(store).store_batch("dev-a", [other]) == []  # another window under that id: refused
        assert Refusals(store).by_device("dev-a") == {"conflict": 1}
        newer = Reported.model_validate({**reported("dev-a", applied=2).model_dump(), "run": 7, "seq": 1})
        Fleet(store).record_reported(newer, seen_at=2000.0, received_at=2000.0)
        view = Fleet(store).device("dev-a")
        assert view is not None
        assert view.applied_version == 2
        Tokens(store).lock("test")
        assert Tokens(store).locked()
        if "leases" not in Base.metadata.tables:
            return
        with store.transaction("test") as session:
            session.execute(
                text(
                    "INSERT INTO leases (name, holder, epoch, expires_at, acquired_at, renewed_at)"
                    " VALUES ('rollouts', 'a', 1, 10.0, 0.0, 0.0)"
                )
            )


@pytest.mark.parametrize("revision", REVISIONS)
def test_a_database_built_before_migrations_is_stamped_at_the_revision_its_columns_show(
    db_url: str, revision: str
) -> None:
    as_built_before_migrations(db_url, revision)
    with engine_of(db_url) as engine:
        done = migrations.upgrade(engine)
        assert (done.before, done.after, done.stamped) == (revision, migrations.head(), True)
        assert differences(engine) == []
        assert version_rows(engine) == [migrations.head()]


def test_the_tables_of_the_last_build_before_migrations_are_stamped_at_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    with engine_of(url) as engine:
        Base.metadata.create_all(engine)  # what Store.open did until now
        done = migrations.upgrade(engine)
    assert (done.before, done.stamped) == (migrations.head(), True)


def test_a_database_from_before_labels_is_completed_as_the_previous_release_did(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    with engine_of(url) as engine, engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE devices (id TEXT PRIMARY KEY, first_seen FLOAT, last_seen FLOAT, online BOOLEAN,"
                " agent_version TEXT)"
            )
        )
        conn.execute(text("INSERT INTO devices VALUES ('old', 1.0, 2.0, 1, '0.1')"))
    with Store(url) as store:
        assert [(d.id, d.labels) for d in Devices(store).all()] == [("old", {})]
        assert Devices(store).update_labels("old", {"site": "lyon"}) == {"site": "lyon"}
    with engine_of(url) as engine:
        assert version_rows(engine) == [migrations.head()]
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())


def test_a_schema_with_a_gap_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    as_built_before_migrations(url, "0004")
    with engine_of(url) as engine, engine.begin() as conn:
        conn.execute(text("DROP TABLE api_lock"))  # 0002's table gone, 0003's and 0004's there
    with pytest.raises(StoreError, match="revision 0003 but not of the ones before it"):
        Store(url).open()


# -- running the migrations -----------------------------------------------------------------------------------


def test_a_database_of_a_newer_hub_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    migrate(url)
    with engine_of(url) as engine, engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="9999"):
        Store(url).open()


def test_a_store_that_does_not_migrate_needs_the_database_at_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    with pytest.raises(StoreError, match="hub db upgrade"):
        Store(url, migrate=False).open()
    assert migrate(url).after == migrations.head()
    with Store(url, migrate=False) as store:
        store.ping()


def test_a_failed_migration_leaves_the_schema_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    with engine_of(url) as engine:
        migrations.upgrade(engine, "0002")
    real = migrations.command.upgrade

    def upgrade_then_fail(cfg: Any, target: str) -> None:
        real(cfg, target)
        raise RuntimeError("the last migration failed")

    monkeypatch.setattr(migrations.command, "upgrade", upgrade_then_fail)
    with pytest.raises(RuntimeError):
        migrate(url)
    with engine_of(url) as engine:
        assert version_rows(engine) == ["0002"]
        assert "refused_windows" not in inspect(engine).get_table_names()  # SQLite's DDL rolled back too


def test_concurrent_upgrades_of_one_sqlite_file_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    results, errors = run_together(url, 3)
    assert errors == []
    assert sorted(r.before or "" for r in results) == ["", migrations.head(), migrations.head()]
    with engine_of(url) as engine:
        assert version_rows(engine) == [migrations.head()]


def run_together(url: str, count: int) -> tuple[list[migrations.Upgrade], list[BaseException]]:
    """``migrate(url)`` in ``count`` threads released at once, each with its own engine (as replicas)."""
    barrier = threading.Barrier(count)
    results: list[migrations.Upgrade] = []
    errors: list[BaseException] = []

    def replica() -> None:
        barrier.wait()
        try:
            results.append(migrate(url))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, errors


def test_hub_db_upgrade_and_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_HUB_STORE__URL", f"sqlite:///{tmp_path / 'hub.db'}")
    runner = CliRunner()
    done = runner.invoke(app, ["db", "current"])
    assert done.exit_code == 1, done.output
    assert "database: none" in done.output
    done = runner.invoke(app, ["db", "upgrade"])
    assert done.exit_code == 0, done.output
    assert f"empty -> {migrations.head()}" in done.output
    done = runner.invoke(app, ["db", "upgrade"])
    assert "nothing to do" in done.output
    done = runner.invoke(app, ["db", "current", "--json"])
    assert done.exit_code == 0, done.output
    assert f'"current": "{migrations.head()}"' in done.output
