"""A PostgreSQL database of one test alone: created with a random name on EDGEFLEET_TEST_POSTGRES_URL's server,
dropped at the end (connections still open to it are ended first)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

SKIP_REASON = "set EDGEFLEET_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1/postgres)"


def server_url() -> str:
    """EDGEFLEET_TEST_POSTGRES_URL, or skip the test."""
    url = os.environ.get("EDGEFLEET_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(SKIP_REASON)
    return url


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new, empty database on ``url``'s server; yields its URL, drops it at exit."""
    name = f"edgefleet_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """An empty hub database for a test parametrised over ``("sqlite", "postgresql")``: a SQLite file in
    ``tmp_path``, or a fresh PostgreSQL database (the test is skipped without EDGEFLEET_TEST_POSTGRES_URL)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    with fresh_database(server_url()) as url:
        yield url
