"""Hub config: TOML + environment, and errors that name the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub.cli.app import app
from hub.config import HubConfig
from hub.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "configs" / "hub.example.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EDGEFLEET_HUB_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    cfg = HubConfig.load()
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.prefix) == ("127.0.0.1", 1883, "edgefleet")
    assert cfg.broker.client_id.startswith("hub-")
    assert cfg.store.url == "sqlite:///./hub.db"
    assert (cfg.api.host, cfg.api.port, cfg.api.token) == ("127.0.0.1", 8780, None)


def test_the_example_config_loads() -> None:
    assert HubConfig.load(EXAMPLE).broker.prefix == "edgefleet"


def test_file_values_and_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[broker]\nhost = "mq.example"\nport = 1884\n[api]\ntoken = "from-file"\n')
    monkeypatch.setenv("EDGEFLEET_HUB_BROKER__PORT", "1999")
    monkeypatch.setenv("EDGEFLEET_HUB_API__TOKEN", "from-env")
    # The CLI's own variables share the prefix and must not trip the server's config.
    monkeypatch.setenv("EDGEFLEET_HUB_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("EDGEFLEET_HUB_TOKEN", "cli-token")
    cfg = HubConfig.load(path)
    assert (cfg.broker.host, cfg.broker.port) == ("mq.example", 1999)  # env overrides one key, file keeps others
    assert cfg.api.token is not None
    assert cfg.api.token.get_secret_value() == "from-env"
    assert "from-env" not in repr(cfg)


def test_every_error_is_one_line_with_its_field_path(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nport = "abc"\nprefx = "x"\n[api]\nport = 70000\n')
    with pytest.raises(ConfigError) as info:
        HubConfig.load(path)
    assert info.value.errors == [
        "broker.port: Input should be a valid integer, unable to parse string as an integer",
        "broker.prefx: Extra inputs are not permitted",
        "api.port: Input should be less than or equal to 65535",
    ]


def test_environment_errors_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_HUB_BROKER__KEEPALIVE", "soon")
    with pytest.raises(ConfigError, match=r"broker\.keepalive: Input should be a valid integer"):
        HubConfig.load()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[broker]\nprefix = "a/+/b"\n', "broker.prefix: Value error, a topic prefix"),
        ('[api]\ntoken = " "\n', "api.token: Value error, an empty token would accept anyone"),
        ("[broker\n", "not valid TOML"),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        HubConfig.load(write(tmp_path, text))
    assert len(info.value.errors) == 1
    assert expected in info.value.errors[0]


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        HubConfig.load(tmp_path / "nope.toml")


def test_serve_exits_2_with_one_line_per_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nport = "abc"\n[store]\nurl = ""\n')
    result = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "broker.port: Input should be a valid integer, unable to parse string as an integer",
        "store.url: String should have at least 1 character",
    ]
