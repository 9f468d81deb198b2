"""The ``hub`` command: ``hub serve`` runs the hub; the other commands talk to its HTTP API only."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hub.client import DEFAULT_URL, TOKEN_ENV, URL_ENV, HubClient
from hub.config import HubConfig
from hub.errors import ClientError, ConfigError, HubError
from hub.schemas import AggregateOut
from hub.service import serve as serve_hub

log = logging.getLogger("hub")

app = typer.Typer(help="edgefleet hub: store and serve what the fleet sends.", no_args_is_help=True)

Api = Annotated[str, typer.Option("--api", envvar=URL_ENV, help="hub API base URL")]
Token = Annotated[str | None, typer.Option("--token", envvar=TOKEN_ENV, help="bearer token of the hub API")]


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config file; EDGEFLEET_HUB_* variables override it")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the hub: ingest aggregates from the broker, store them, ack them, serve the API."""
    try:
        cfg = HubConfig.load(config)
    except ConfigError as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    level = logging.getLevelNamesMapping().get(log_level.upper())
    if level is None:
        typer.echo(f"--log-level: unknown level {log_level!r}", err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    raise typer.Exit(_run_until_signalled(cfg))


def _run_until_signalled(cfg: HubConfig) -> int:
    """Run serve(); the first SIGINT/SIGTERM stops it gracefully, a second one exits at once."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(serve_hub(cfg), name="hub.serve")
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            if len(received) == 1:
                log.info("%s: stopping (send it again to stop at once)", signal.Signals(signum).name)
                task.cancel()
            else:
                log.warning("%s again: exiting now", signal.Signals(signum).name)
                os._exit(128 + signum)  # committed data is safe; whatever is unacked the agents resend

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await task
        except asyncio.CancelledError:
            if not received:
                raise
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    try:
        asyncio.run(main())
    except (HubError, ExceptionGroup) as exc:
        for leaf in _leaves(exc):
            if isinstance(leaf, HubError):
                log.error("%s", leaf)
            else:
                log.error("hub failed: %r", leaf, exc_info=leaf)
        return 1
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


@app.command()
def aggregates(
    *,
    device: Annotated[str | None, typer.Option(help="only this device")] = None,
    subscription: Annotated[str | None, typer.Option(help="only this subscription")] = None,
    since: Annotated[str | None, typer.Option(help="windows starting since: 10m, 2h, epoch or ISO 8601")] = None,
    until: Annotated[str | None, typer.Option(help="windows starting before: like --since")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many windows, newest first")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show stored window results."""
    try:
        with HubClient(api, token) as hub:
            rows = hub.aggregates(device=device, subscription=subscription, since=since, until=until, limit=limit)
    except ClientError as exc:
        typer.echo(f"hub: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
    elif not rows:
        typer.echo("no windows match", err=True)
    else:
        Console().print(_aggregates_table(rows))


def _aggregates_table(rows: list[AggregateOut]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("window start", "device", "subscription", "group", "events", "field"):
        table.add_column(column, no_wrap=column == "window start")
    for column in ("count", "mean", "min", "max", "sum"):
        table.add_column(column, justify="right")
    for row in rows:
        window = [_local(row.window_start), row.device, row.subscription, row.group, str(row.events)]
        if not row.fields:
            table.add_row(*window)
        for i, (name, f) in enumerate(sorted(row.fields.items())):
            # One line per field; the window's columns only on its first line, so windows stand out.
            lead = window if i == 0 else [""] * len(window)
            table.add_row(*lead, name, str(f.count), *(f"{v:.6g}" for v in (f.mean, f.min, f.max, f.sum)))
    return table


@app.command()
def devices(api: Api = DEFAULT_URL, token: Token = None) -> None:
    """Show the devices the hub has heard from."""
    try:
        with HubClient(api, token) as hub:
            rows = hub.devices()
    except ClientError as exc:
        typer.echo(f"hub: {exc}", err=True)
        raise typer.Exit(1) from None
    table = Table(box=None, header_style="bold")
    for column in ("device", "online", "agent", "first seen", "last seen"):
        table.add_column(column)
    for dev in rows:
        online = "yes" if dev.online else "no"
        table.add_row(dev.id, online, dev.agent_version, _local(dev.first_seen), _local(dev.last_seen))
    Console().print(table)


def _local(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def main() -> None:
    """Console-script entry point."""
    app()
