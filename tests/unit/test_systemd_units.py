"""configs/systemd/: each unit is one systemd accepts, and it runs a command the CLI has, with options it takes.

``systemd-analyze verify`` needs no running systemd (it reads the unit and the units it names); it also checks
that ExecStart's binary exists, so it verifies a copy whose binary is the one in this venv. Where it is not
installed, the parse checks below still run.
"""

from __future__ import annotations

import argparse
import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hub.cli.app import app as hub_app

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "configs" / "systemd"
HUB_UNIT = UNITS / "edgefleet-hub.service"
AGENT_UNIT = UNITS / "edge-agent.service"
INSTALLED_BIN = "/opt/edgefleet/bin/"
VENV_BIN = Path(sys.executable).parent


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(path)
    return unit


def exec_start(path: Path) -> list[str]:
    return shlex.split(read_unit(path)["Service"]["ExecStart"])


@pytest.mark.parametrize("unit", [HUB_UNIT, AGENT_UNIT], ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_the_unit(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    binary = exec_start(unit)[0]
    assert binary.startswith(INSTALLED_BIN), binary
    local = VENV_BIN / binary.removeprefix(INSTALLED_BIN)
    assert local.exists(), f"{local}: the venv does not install {binary}'s command"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(binary, str(local)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False)
    # An unknown key or a bad value is only a warning (exit status 0): any message naming the unit fails too.
    messages = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0, result.stdout + result.stderr
    assert not messages, result.stdout + result.stderr


def test_the_hub_unit_runs_hub_serve_with_options_it_has() -> None:
    binary, *args = exec_start(HUB_UNIT)
    assert binary == f"{INSTALLED_BIN}hub"
    assert args[0] == "serve"
    command = typer.main.get_command(hub_app).commands["serve"]  # type: ignore[attr-defined]
    parsed = command.make_context("serve", args[1:])  # raises on an unknown option or a missing value
    assert parsed.params["config"] == Path("/etc/edgefleet/hub.toml")


def test_the_agent_unit_runs_edge_agent_run_with_options_it_has() -> None:
    from edge_agent.__main__ import _parser as agent_parser

    binary, *args = exec_start(AGENT_UNIT)
    assert binary == f"{INSTALLED_BIN}edge-agent"
    parsed = agent_parser().parse_args(args)  # exits (SystemExit) on an unknown option
    assert isinstance(parsed, argparse.Namespace)
    assert (parsed.command, parsed.config) == ("run", Path("/etc/edgefleet/agent.toml"))


def test_the_hub_unit_restarts_on_failure_but_not_on_the_exit_status_of_a_bad_config(tmp_path: Path) -> None:
    service = read_unit(HUB_UNIT)["Service"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"].split() == ["2"]
    assert "docker" not in read_unit(HUB_UNIT)["Unit"].get("Requires", "")

    runner = CliRunner()
    misspelt = tmp_path / "misspelt.toml"
    misspelt.write_text('[broker]\nhots = "x"\n')
    assert runner.invoke(hub_app, ["serve", "--config", str(misspelt)]).exit_code == 2
    # Found while starting, before the store or the broker is touched: still a config problem.
    no_key = tmp_path / "no-key.toml"
    no_key.write_text(f'[signing]\nprivate_key = "{tmp_path / "absent.key"}"\n')
    result = runner.invoke(hub_app, ["serve", "--config", str(no_key)])
    assert result.exit_code == 2, result.output
    # An API offered beyond loopback that never had a token: a config problem too, not worth a restart loop.
    open_api = tmp_path / "open-api.toml"
    open_api.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "hub.db"}"\n[api]\nhost = "0.0.0.0"\n')
    result = runner.invoke(hub_app, ["serve", "--config", str(open_api)])
    assert result.exit_code == 2, result.output
