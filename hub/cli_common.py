"""What every API command of the ``hub`` CLI shares: the --api/--token/--json options, the client, errors.

Tests replace :func:`client` to point the commands at an in-process API.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel

from hub.client import DEFAULT_URL, TOKEN_ENV, URL_ENV, HubClient
from hub.errors import ClientError

T = TypeVar("T")

Api = Annotated[str, typer.Option("--api", envvar=URL_ENV, help="hub API base URL")]
Token = Annotated[str | None, typer.Option("--token", envvar=TOKEN_ENV, help="bearer token of the hub API")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

__all__ = ["DEFAULT_URL", "Api", "AsJson", "Token", "call", "client", "fail", "to_json"]


def client(api: str, token: str | None) -> HubClient:
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
