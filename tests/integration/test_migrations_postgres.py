"""Replicas starting together on one empty PostgreSQL database: each migrates under the advisory lock, so one
builds the schema and the others wait, then find it at head. Needs EDGEFLEET_TEST_POSTGRES_URL (scripts/postgres.sh);
each test gets a database of its own, dropped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from hub.db import migrations
from tests.support.postgres_db import fresh_database, server_url
from tests.unit.hub.test_migrations import differences, run_together, version_rows

REPLICAS = 3


@pytest.fixture
def db_url() -> Iterator[str]:
    with fresh_database(server_url()) as url:
        yield url


def check_one_schema_at_head(url: str) -> None:
    engine = create_engine(url)
    try:
        assert version_rows(engine) == [migrations.head()]
        assert differences(engine) == []
        with engine.connect() as conn:  # one of each table: nothing built twice, nothing left half-built
            tables = conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'devices'")
            ).scalar()
        assert tables == 1
    finally:
        engine.dispose()


def test_replicas_migrating_at_once_in_threads_all_succeed(db_url: str) -> None:
    results, errors = run_together(db_url, REPLICAS)
    assert errors == []
    befores = sorted(r.before or "" for r in results)
    assert befores == ["", *[migrations.head()] * (REPLICAS - 1)]  # one migrated; the others found it done
    check_one_schema_at_head(db_url)


def test_hub_db_upgrade_in_processes_started_at_once(db_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "EDGEFLEET_HUB_STORE__URL": db_url}
    hub = Path(sys.executable).with_name("hub")
    procs = [
        subprocess.Popen(
            [str(hub), "db", "upgrade", "--json"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True
        )
        for _ in range(REPLICAS)
    ]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * REPLICAS, outputs
    assert sum('"before": null' in out for out in outputs) == 1, outputs
    check_one_schema_at_head(db_url)
