"""API tokens: stored hashed, accepted by the API until revoked; the CLI's token from its config file."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from hub.api.app import create_app
from hub.cli import common as cli_common
from hub.cli.app import app
from hub.config import HubConfig
from hub.db.store import Store
from hub.errors import Conflict, HubError
from hub.security.tokens import Tokens
from hub.service import _check_api_auth


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "hub.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{db}") as opened:
        yield opened


def api(store: Store, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(store, token)), base_url="http://hub")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_only_a_digest_is_stored(store: Store, db: Path) -> None:
    tokens = Tokens(store)
    token, info = tokens.create("ci")
    assert token.startswith("eft_")
    assert len(token) >= 40
    assert info.hint == token[:8]
    with pytest.raises(Conflict):
        tokens.create("ci")
    rows = sqlite3.connect(db).execute("SELECT name, digest, hint FROM api_tokens").fetchall()
    assert rows == [("ci", hashlib.sha256(token.encode()).hexdigest(), token[:8])]
    # Not in clear anywhere in the database files (main file and WAL).
    for path in db.parent.glob("hub.db*"):
        assert token.encode() not in path.read_bytes()
    assert [t.name for t in tokens.list_tokens()] == ["ci"]
    assert tokens.check(token) is True
    assert tokens.check("eft_guess") is False
    assert tokens.check(None) is False
    assert tokens.revoke("ci")
    assert not tokens.revoke("ci")
    assert tokens.check(token) is False  # no token left, and the API stays closed
    assert tokens.check(None) is False


async def test_the_api_wants_a_stored_token_once_there_is_one(store: Store) -> None:
    async with api(store) as client:
        assert (await client.get("/v1/devices")).status_code == 200  # development: no token anywhere
        token, _ = Tokens(store).create("ops")
        assert (await client.get("/v1/devices")).status_code == 401
        assert (await client.get("/v1/devices", headers=bearer("eft_wrong"))).status_code == 401
        assert (await client.get("/v1/devices", headers=bearer(token))).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        Tokens(store).revoke("ops")
        Tokens(store).create("other")
        assert (await client.get("/v1/devices", headers=bearer(token))).status_code == 401


async def test_revoking_the_last_token_keeps_the_api_closed(store: Store) -> None:
    async with api(store) as client:
        token, _ = Tokens(store).create("only")
        assert (await client.get("/v1/devices", headers=bearer(token))).status_code == 200
        revoked = Tokens(store).revoke("only")
        assert revoked is not None
        assert revoked.remaining == 0
        assert (await client.get("/v1/devices")).status_code == 401
        assert (await client.get("/v1/devices", headers=bearer(token))).status_code == 401
    # A hub started afterwards (a new app over the same database) is closed too.
    async with api(store) as client:
        assert (await client.get("/v1/devices")).status_code == 401
    assert Tokens(store).locked()


def test_a_database_with_tokens_from_before_the_lock_row_counts_as_locked(store: Store, db: Path) -> None:
    Tokens(store).create("old")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM api_lock")  # as written before the lock row existed
    assert Tokens(store).check(None) is False
    assert Tokens(store).revoke("old") is not None
    assert Tokens(store).check(None) is False  # revoke wrote the lock row before deleting the last token
    assert sqlite3.connect(db).execute("SELECT count(*) FROM api_lock").fetchone() == (1,)


async def test_a_configured_token_locks_the_api_for_good(store: Store) -> None:
    await _check_api_auth(HubConfig(api={"host": "127.0.0.1"}), store, "configured")
    async with api(store) as client:  # the next start without the [api] token
        assert (await client.get("/v1/devices")).status_code == 401
    await _check_api_auth(HubConfig(api={"host": "0.0.0.0"}), store, None)  # closed: may listen anywhere


async def test_the_config_token_keeps_working_beside_stored_ones(store: Store) -> None:
    stored, _ = Tokens(store).create("ops")
    async with api(store, "dev-token") as client:
        assert (await client.get("/v1/devices", headers=bearer("dev-token"))).status_code == 200
        assert (await client.get("/v1/devices", headers=bearer(stored))).status_code == 200
        assert (await client.get("/v1/devices")).status_code == 401


async def test_serve_refuses_an_open_api_beyond_loopback(store: Store) -> None:
    await _check_api_auth(HubConfig(api={"host": "127.0.0.1"}), store, None)
    with pytest.raises(HubError, match="open to anyone"):
        await _check_api_auth(HubConfig(api={"host": "0.0.0.0"}), store, None)
    await _check_api_auth(HubConfig(api={"host": "0.0.0.0"}), store, "configured")
    Tokens(store).create("ops")
    await _check_api_auth(HubConfig(api={"host": "0.0.0.0"}), store, None)


def test_token_commands(tmp_path: Path, db: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{db}"\n')
    runner = CliRunner()
    created = runner.invoke(app, ["token", "create", "laptop", "--config", str(config)])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("eft_")
    assert "cannot be shown again" in created.stderr
    listed = runner.invoke(app, ["token", "list", "--config", str(config)])
    assert listed.stdout.startswith(f"laptop\t{token[:8]}...")
    assert token not in listed.stdout
    assert runner.invoke(app, ["token", "create", "spare", "--config", str(config)]).exit_code == 0
    first = runner.invoke(app, ["token", "revoke", "laptop", "--config", str(config)])
    assert first.exit_code == 0
    assert "last stored token" not in first.stderr
    last = runner.invoke(app, ["token", "revoke", "spare", "--config", str(config)])
    assert last.exit_code == 0
    assert "warning: that was the last stored token" in last.stderr
    assert "stay closed" in last.stderr
    missing = runner.invoke(app, ["token", "revoke", "laptop", "--config", str(config)])
    assert missing.exit_code == 1
    assert "no token named" in missing.stderr


def test_the_cli_reads_url_and_token_from_its_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hub-cli.toml"
    monkeypatch.setenv(cli_common.CLI_CONFIG_ENV, str(path))
    client = cli_common.client(cli_common.DEFAULT_URL, None)
    assert (client.base_url, client._has_token) == (cli_common.DEFAULT_URL, False)  # no file: defaults
    path.write_text('url = "http://hub.example:8780"\ntoken = "eft_from_file"\n')
    path.chmod(0o600)
    client = cli_common.client(cli_common.DEFAULT_URL, None)
    assert client.base_url == "http://hub.example:8780"
    assert client._http.headers["Authorization"] == "Bearer eft_from_file"
    # The flags (and the environment, through them) win over the file.
    client = cli_common.client("http://other:1", "eft_flag")
    assert (client.base_url, client._http.headers["Authorization"]) == ("http://other:1", "Bearer eft_flag")
    monkeypatch.delenv(cli_common.CLI_CONFIG_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cli_common.cli_config_path() == tmp_path / "xdg" / "edgefleet" / "hub-cli.toml"
