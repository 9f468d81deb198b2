"""The API's errors tell strangers nothing about the store: no URL, no password, no database message.

A caller who has not passed the token check gets a generic message; one who has gets a short reason with
URLs and the store's password taken out; the log gets everything.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from hub.api.app import create_app
from hub.api.errors import REASON_CHARS, scrub
from hub.db.store import Store
from hub.errors import BrokerError, StoreError
from hub.fleet.devices import Devices
from hub.fleet.registry import Fleet
from hub.security.tokens import Tokens

TOKEN = "errors-test-token"
PASSWORD = "S3cret-Pw-42"
SECRET_URL = f"postgresql+psycopg://hub:{PASSWORD}@db.internal.example:5432/edgefleet"
DB_MESSAGE = f"(psycopg.OperationalError) connection to {SECRET_URL} failed: FATAL: password authentication failed"
SECRETS = (PASSWORD, "db.internal.example", "postgresql")
LEAKS = (*SECRETS, "psycopg", "FATAL", "password authentication")
"""What a stranger must not see: the URL's parts and anything of the database's message."""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "hub.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{db}") as opened:
        Devices(opened).record_status("dev-a", online=True, agent_version="0.2.0", seen_at=1.0)
        yield opened


@pytest.fixture
def failing(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The store as a PostgreSQL store whose URL holds a password, now failing with a driver's message."""

    def transaction(operation: str) -> AbstractContextManager[Session]:
        raise StoreError(operation, DB_MESSAGE)

    monkeypatch.setattr(store, "url", SECRET_URL)
    monkeypatch.setattr(store, "transaction", transaction)
    return store


def client(store: Store, token: str | None = None, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    app = create_app(store, token)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub", headers=headers)


def assert_no_leak(response: httpx.Response, leaks: tuple[str, ...] = LEAKS) -> None:
    for leak in leaks:
        assert leak not in response.text, f"{leak!r} in {response.text}"


async def test_unauthenticated_callers_get_a_generic_message(failing: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hub.api.errors")
    async with client(failing, TOKEN) as anonymous:
        health = await anonymous.get("/healthz")
        refused = await anonymous.get("/v1/devices", headers={"Authorization": "Bearer eft_guess"})
    # The probe, and a request whose token check itself failed: 503 and nothing more.
    for response in (health, refused):
        assert response.status_code == 503
        assert response.json() == {"detail": "the store is unavailable"}
        assert_no_leak(response)
    assert "password authentication failed" in caplog.text  # the details are in the log


async def test_authenticated_callers_get_a_short_reason_without_url_or_password(failing: Store) -> None:
    async with client(failing, TOKEN, {"Authorization": f"Bearer {TOKEN}"}) as operator:
        response = await operator.get("/v1/devices")
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith("the store is unavailable: ")
    assert "password authentication failed" in detail
    assert "<store url>" in detail
    assert_no_leak(response, SECRETS)
    assert len(detail) < 80 + REASON_CHARS


async def test_a_real_database_message_reaches_only_an_authenticated_caller(store: Store, db: Path) -> None:
    token, _ = Tokens(store).create("ops")
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE reported")
    async with client(store, headers={"Authorization": f"Bearer {token}"}) as operator:
        known = await operator.get("/v1/devices/dev-a")
    assert known.status_code == 503
    assert "no such table" in known.json()["detail"]
    assert str(db) not in known.text
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE api_tokens")
    async with client(store) as anonymous:
        response = await anonymous.get("/v1/devices")
    assert response.status_code == 503
    assert response.json() == {"detail": "the store is unavailable"}


async def test_other_hub_errors_are_generic_to_strangers_and_scrubbed_for_operators(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise BrokerError(f"not connected to mqtt://hub:{PASSWORD}@broker.internal.example:1883")

    monkeypatch.setattr(Fleet, "devices", broken)
    async with client(store, TOKEN, {"Authorization": f"Bearer {TOKEN}"}) as operator:
        response = await operator.get("/v1/devices")
    assert response.status_code == 500
    assert response.json() == {"detail": "the hub failed: not connected to <url>"}
    assert PASSWORD not in response.text


def test_scrub() -> None:
    url = f"postgresql://hub:{PASSWORD}@db:5432/x"
    assert scrub(f"failed at {url}: bad", url) == "failed at <store url>: bad"
    assert scrub(f"auth failed ({PASSWORD})", url) == "auth failed (***)"
    assert scrub("see https://user:pw@host/path now", "sqlite:///x.db") == "see <url> now"
    assert len(scrub("x" * 1000, "sqlite://")) == REASON_CHARS
