"""``hub keys init``: the key pair on disk, its permissions, no silent overwrite; loading it for ``hub serve``."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from edge_protocol.desired import DesiredDocument, key_id, load_public_key, sign_document, verify_document
from hub.cli.app import app
from hub.config import HubConfig
from hub.desired.keys import PRIVATE_NAME, PUBLIC_NAME, KeysExist, init_keys, load_signing_key
from hub.errors import ConfigError
from tests.support.fsyncs import record_fsyncs


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_a_usable_pair_with_a_private_private_key(tmp_path: Path) -> None:
    pair = init_keys(tmp_path / "keys")
    assert (pair.private_path.name, pair.public_path.name) == (PRIVATE_NAME, PUBLIC_NAME)
    assert mode(pair.private_path) == 0o600
    assert mode(pair.public_path) == 0o644
    assert pair.private_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert pair.public_path.read_text() == pair.public_pem
    assert pair.public_pem.startswith("-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    private, public = load_signing_key(pair.private_path), load_public_key(pair.public_pem)
    assert key_id(public) == pair.key_id == key_id(private.public_key())
    signed = sign_document(DesiredDocument(device="d", version=1, issued_at=0.0), private)
    assert verify_document(signed.model_dump_json().encode(), public, "d").version == 1
    assert [p.name for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_the_pair_is_written_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file fsynced and renamed, then its directory fsynced: a power cut must not forget the rename."""
    synced = record_fsyncs(monkeypatch)
    pair = init_keys(tmp_path / "keys")
    assert synced == ["file", "dir", "file", "dir"]
    assert sorted(p.name for p in pair.private_path.parent.iterdir()) == sorted([PRIVATE_NAME, PUBLIC_NAME])


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = init_keys(tmp_path)
    (tmp_path / PUBLIC_NAME).unlink()  # even half a pair is kept
    with pytest.raises(KeysExist, match="--force"):
        init_keys(tmp_path)
    assert (tmp_path / PRIVATE_NAME).read_text().startswith("-----BEGIN PRIVATE KEY")
    second = init_keys(tmp_path, force=True)
    assert second.key_id != first.key_id
    assert mode(second.private_path) == 0o600


def test_the_cli_prints_the_public_key_and_its_id(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "init", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    pem = (tmp_path / PUBLIC_NAME).read_text()
    public = load_public_key(pem)
    assert f"key id:      {key_id(public)}" in result.stdout
    assert pem in result.stdout
    again = CliRunner().invoke(app, ["keys", "init", "--dir", str(tmp_path)])
    assert again.exit_code == 1
    assert "already exist" in again.output
    forced = CliRunner().invoke(app, ["keys", "init", "--dir", str(tmp_path), "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    info = json.loads(forced.stdout)
    assert info["key_id"] == key_id(load_public_key(info["public_key_pem"])) != key_id(public)
    assert info["private_key"] == str(tmp_path / PRIVATE_NAME)


def test_loading_a_bad_key_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"signing\.private_key: cannot read"):
        load_signing_key(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted Ed25519 PEM key"):
        load_signing_key(garbage)


def test_a_key_readable_by_others_is_loaded_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "open.key"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="hub.desired.keys"):
        load_signing_key(path)
    assert "chmod 600" in caplog.text


def test_the_config_takes_the_key_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert HubConfig.load().signing.private_key is None
    config = tmp_path / "hub.toml"
    config.write_text('[signing]\nprivate_key = "/etc/edgefleet/hub-signing.key"\n')
    assert HubConfig.load(config).signing.private_key == Path("/etc/edgefleet/hub-signing.key")
    monkeypatch.setenv("EDGEFLEET_HUB_SIGNING__PRIVATE_KEY", "/run/secrets/key")
    assert HubConfig.load(config).signing.private_key == Path("/run/secrets/key")
    config.write_text('[signing]\nprivate_kee = "x"\n')
    with pytest.raises(ConfigError, match=r"signing\.private_kee"):
        HubConfig.load(config)
