"""The agent and the hub load their configs the same way: same entry shape, same errors, same env convention."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import edge_agent.config
import edge_agent.errors
import hub.config
import hub.errors

LOADERS = [
    pytest.param(edge_agent.config.load_config, edge_agent.errors.ConfigError, "EDGEFLEET_AGENT_", id="agent"),
    pytest.param(hub.config.load_config, hub.errors.ConfigError, "EDGEFLEET_HUB_", id="hub"),
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("EDGEFLEET_AGENT_", "EDGEFLEET_HUB_")):
            monkeypatch.delenv(name)


def _errors(load: Callable[..., Any], error: type[Exception], *args: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(error) as info:
        load(*args, **kwargs)
    return list(info.value.errors)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("load", "error", "prefix"), LOADERS)
def test_file_problems_name_the_file(load: Any, error: type[Exception], prefix: str, tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    assert _errors(load, error, missing) == [f"{missing}: cannot read: No such file or directory"]
    broken = tmp_path / "broken.toml"
    broken.write_text("[table\n")
    (line,) = _errors(load, error, str(broken))
    assert line.startswith(f"{broken}: not valid TOML: ")


@pytest.mark.parametrize(("load", "error", "prefix"), LOADERS)
def test_unknown_keys_fail_with_their_path(load: Any, error: type[Exception], prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("misspelt = 1\n")
    assert _errors(load, error, path) == ["misspelt: Extra inputs are not permitted"]


@pytest.mark.parametrize(("load", "error", "prefix"), LOADERS)
def test_environment_overrides_a_nested_field_and_fails_with_its_path(
    load: Any, error: type[Exception], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = "LOCAL_BROKER" if prefix == "EDGEFLEET_AGENT_" else "BROKER"
    monkeypatch.setenv(f"{prefix}{section}__KEEPALIVE", "45")
    assert getattr(load(None), section.lower()).keepalive == 45
    monkeypatch.setenv(f"{prefix}{section}__KEEPALIVE", "soon")
    (line,) = _errors(load, error, None)
    assert line.startswith(f"{section.lower()}.keepalive: ")
