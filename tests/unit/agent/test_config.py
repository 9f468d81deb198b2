"""Agent config: TOML file, validation errors with dotted paths, references, environment overrides."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import ConfigError

GOOD = textwrap.dedent(
    """
    device_id = "dev-1"
    data_dir = "/var/lib/edge"

    [local_broker]
    port = 1884

    [outbox]
    ttl = "1h"

    [[handlers]]
    name = "temp-c"
    image = "edgefleet/temp@sha256:abc"

    [[subscriptions]]
    name = "temp"
    topic = "sensors/+/temp"
    handler = "temp-c"
    window = { kind = "tumbling", size = "30s" }
    lateness = "2s"
    """
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EDGEFLEET_AGENT_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_good_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.device_id == "dev-1"
    assert cfg.local_broker.port == 1884
    assert cfg.outbox.ttl == 3600.0
    assert cfg.outbox_path == Path("/var/lib/edge/outbox.sqlite")
    assert cfg.client_id == "agent-dev-1"
    (sub,) = cfg.subscriptions
    assert (sub.window.size, sub.lateness, sub.handler) == (30.0, 2.0, "temp-c")


def test_bad_field_has_dotted_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace('size = "30s"', 'size = "soon"')))
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("subscriptions.0.window.size: ")
    assert "not a duration" in info.value.errors[0]


def test_every_error_is_listed(tmp_path: Path) -> None:
    text = GOOD.replace("port = 1884", "port = 70000").replace('ttl = "1h"', "ttl = -1")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    paths = sorted(e.split(":")[0] for e in info.value.errors)
    assert paths == ["local_broker.port", "outbox.ttl"]


def test_unknown_key_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"local_broker\.prot"):
        load_config(write(tmp_path, GOOD.replace("port = 1884", "prot = 1884")))


def test_unknown_handler_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'temp'.*handler 'nope'.*not defined"):
        load_config(write(tmp_path, GOOD.replace('handler = "temp-c"', 'handler = "nope"')))


def test_duplicate_names_fail(tmp_path: Path) -> None:
    dup = GOOD + '\n[[handlers]]\nname = "temp-c"\nimage = "x"\n'
    with pytest.raises(ConfigError, match="handler names must be unique"):
        load_config(write(tmp_path, dup))


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "device_id = "))


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_AGENT_DEVICE_ID", "from-env")
    monkeypatch.setenv("EDGEFLEET_AGENT_LOCAL_BROKER__PORT", "2883")
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.device_id == "from-env"
    assert cfg.local_broker.port == 2883
    assert cfg.subscriptions[0].name == "temp"  # the rest still comes from the file


def test_bad_env_value_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_AGENT_DEVICE_ID", "Not A Name!")
    with pytest.raises(ConfigError, match="device_id"):
        load_config(write(tmp_path, GOOD))


def test_overrides_and_defaults() -> None:
    cfg = load_config(None, device_id="d2")
    assert isinstance(cfg, AgentConfig)
    assert (cfg.device_id, cfg.subscriptions, cfg.outbox.policy) == ("d2", [], "drop-oldest")
