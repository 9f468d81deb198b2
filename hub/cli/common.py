"""What every API command of the ``hub`` CLI shares: the --api/--token/--json options, the client, errors.

Tests replace :func:`client` to point the commands at an in-process API. The URL and token come from the
flags, then the environment, then the CLI config file (``~/.config/edgefleet/hub-cli.toml``: ``url``, ``token``).
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel

from hub.cli.client import DEFAULT_URL, TOKEN_ENV, URL_ENV, HubClient
from hub.errors import ClientError
from hub.fleet.labels import LabelError, Selector

T = TypeVar("T")

Api = Annotated[str, typer.Option("--api", envvar=URL_ENV, help="hub API base URL")]
Token = Annotated[str | None, typer.Option("--token", envvar=TOKEN_ENV, help="bearer token of the hub API")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

__all__ = ["DEFAULT_URL", "Api", "AsJson", "Token", "call", "client", "fail", "to_json"]


CLI_CONFIG_ENV = "EDGEFLEET_HUB_CLI_CONFIG"


def cli_config_path() -> Path:
    """``$EDGEFLEET_HUB_CLI_CONFIG``, else ``$XDG_CONFIG_HOME/edgefleet/hub-cli.toml`` (``~/.config`` default)."""
    if explicit := os.environ.get(CLI_CONFIG_ENV):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefleet" / "hub-cli.toml"


def cli_settings() -> dict[str, str]:
    """``url`` and ``token`` from the CLI config file when it exists (TOML); the flags and environment win."""
    path = cli_config_path()
    try:
        data = tomllib.loads(path.read_text())
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise fail(f"hub: cannot read {path}: {exc}", 2) from None
    if "token" in data and mode & (stat.S_IRWXG | stat.S_IRWXO):
        typer.echo(f"hub: warning: {path} holds a token and is readable by others: chmod 600 it", err=True)
    return {key: str(data[key]) for key in ("url", "token") if key in data}


def client(api: str, token: str | None) -> HubClient:
    if token is None or api == DEFAULT_URL:
        settings = cli_settings()
        token = token if token is not None else settings.get("token")
        api = settings.get("url", api) if api == DEFAULT_URL else api
    return HubClient(api, token)


def call(request: Callable[[], T]) -> T:
    """``request()``, or exit 1 printing why the hub refused it: one line per validation error."""
    try:
        return request()
    except ClientError as exc:
        if exc.status == 422 and exc.details:
            for line in exc.details:
                typer.echo(f"hub: invalid {line.replace('Value error, ', '')}", err=True)
        else:
            typer.echo(f"hub: {exc}", err=True)
        raise typer.Exit(1) from None


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` to stderr and return the Exit to raise (2: the command line is wrong)."""
    typer.echo(message, err=True)
    return typer.Exit(code)


def to_json(value: BaseModel | Sequence[BaseModel]) -> str:
    """A model or a list of models as the API answered them, indented."""
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"), indent=2)
    return json.dumps([item.model_dump(mode="json") for item in value], indent=2)


def check_target(target: list[str] | None) -> None:
    """Refuse a malformed ``--target`` label selector before anything is sent to the hub."""
    try:
        Selector.parse(target)
    except LabelError as exc:
        raise fail(f"--target: {exc}") from None
