"""The ``hub`` command: ``hub serve`` runs the hub; the other commands talk to its HTTP API only."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from hub.cli import common as cli_common
from hub.cli.catalog import handlers_app, subscriptions_app
from hub.cli.client import HubClient
from hub.cli.common import DEFAULT_URL, Api, AsJson, Token
from hub.cli.db import db_app
from hub.cli.keys import keys_app
from hub.cli.provision import register as register_provisioning
from hub.cli.render import aggregates as render
from hub.cli.render import fleet as render_fleet
from hub.cli.rollouts import release_app, rollout_app
from hub.cli.security import broker_app, ca_app, token_app
from hub.cli.simulate import register as register_simulate
from hub.config import HubConfig
from hub.errors import ConfigError, HubError
from hub.fleet.labels import LabelError, Selector, check_key, parse_assignments

log = logging.getLogger("hub")

app = typer.Typer(help="edgefleet hub: store and serve what the fleet sends.", no_args_is_help=True)
device_app = typer.Typer(help="Act on one device.", no_args_is_help=True)
app.add_typer(device_app, name="device")
app.add_typer(handlers_app, name="handlers")
app.add_typer(subscriptions_app, name="subscriptions")
app.add_typer(keys_app, name="keys")
app.add_typer(ca_app, name="ca")
app.add_typer(broker_app, name="broker")
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")
register_provisioning(device_app)
app.add_typer(release_app, name="release")
app.add_typer(rollout_app, name="rollout")
register_simulate(app)

T = TypeVar("T")


class Rollup(StrEnum):
    """What a roll-up merges across."""

    DEVICES = "devices"


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config file; EDGEFLEET_HUB_* variables override it")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="do not migrate the schema (`hub db upgrade` does): check it only")
    ] = False,
) -> None:
    """Run the hub: ingest aggregates from the broker, store them, ack them, serve the API."""
    try:
        cfg = HubConfig.load(config)
    except ConfigError as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    if no_migrate:
        cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"migrate": False})})
    level = logging.getLevelNamesMapping().get(log_level.upper())
    if level is None:
        typer.echo(f"--log-level: unknown level {log_level!r}", err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _tune_gc()
    raise typer.Exit(_run_until_signalled(cfg))


def _tune_gc() -> None:
    """Keep the cyclic GC from rescanning what lives as long as the process.

    The imports (SQLAlchemy, FastAPI, pydantic) leave hundreds of thousands of objects that every full
    collection walked again, and parsing a batch allocates enough to trigger collections all the time: the
    GC's time showed up as the parser's, at three times its cost alone (docs/performance.md). Frozen, they
    are skipped; a larger first threshold makes collections rarer (our data holds few reference cycles).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _run_until_signalled(cfg: HubConfig) -> int:
    """Run serve(); the first SIGINT/SIGTERM stops it gracefully, a second one exits at once."""
    # Here, not at the top: the whole hub (store, broker, API server) loads for `hub serve` only.
    from hub.service import serve as serve_hub
    from mqtt_session.signals import handle_signals

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

        restore = handle_signals(loop, on_signal)
        try:
            await task
        except asyncio.CancelledError:
            if not received:
                raise
        finally:
            restore()

    try:
        asyncio.run(main())
    except (HubError, ExceptionGroup) as exc:
        leaves = _leaves(exc)
        for leaf in leaves:
            if isinstance(leaf, HubError):
                log.error("%s", leaf)
            else:
                log.error("hub failed: %r", leaf, exc_info=leaf)
        # A config problem found while starting (an unreadable signing key) exits 2 like a file that does not
        # parse: a restart cannot fix it (the systemd unit's RestartPreventExitStatus=2).
        return 2 if any(isinstance(leaf, ConfigError) for leaf in leaves) else 1
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
    label: Annotated[list[str] | None, typer.Option(help="devices with this label, k=v (repeatable)")] = None,
    group: Annotated[str | None, typer.Option(help="only this group key")] = None,
    rollup: Annotated[Rollup | None, typer.Option(help="merge the same window across devices")] = None,
    every: Annotated[str | None, typer.Option(help="merge windows into tumbling buckets this long, e.g. 1m")] = None,
    stats: Annotated[str | None, typer.Option(help="statistics to show, e.g. count,mean,p99")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many rows, newest first")] = 100,
    as_json: AsJson = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print CSV: one line per window and field")] = False,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show stored window results, optionally rolled up across devices (--rollup) and in time (--every)."""
    if as_json and as_csv:
        typer.echo("--json and --csv: choose one", err=True)
        raise typer.Exit(2)
    _check_terms(label, "--label")
    with _client(api, token) as hub:
        rows = _call(
            lambda: hub.aggregates(
                device=device,
                subscription=subscription,
                since=since,
                until=until,
                limit=limit,
                labels=label,
                group=group,
                rollup=rollup.value if rollup is not None else None,
                every=every,
                stats=stats,
            )
        )
    if as_json:
        typer.echo(cli_common.to_json(rows))
    elif as_csv:
        render.write_aggregates_csv(rows, sys.stdout)
    elif not rows:
        typer.echo("no windows match", err=True)
    else:
        Console().print(render.aggregates_table(rows, with_devices=rollup is not None))


@app.command()
def devices(
    label: Annotated[list[str] | None, typer.Option(help="only devices with this label, k=v (repeatable)")] = None,
    as_json: AsJson = False,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show the devices: labels, online, last seen, applied/desired version, handlers' health, losses."""
    _check_terms(label, "--label")
    with _client(api, token) as hub:
        rows = _call(lambda: hub.devices(labels=label))
    if as_json:
        typer.echo(cli_common.to_json(rows))
    else:
        Console().print(render_fleet.devices_table(rows))


@device_app.command("show")
def device_show(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="the device")],
    as_json: AsJson = False,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show one device: labels, status, desired vs applied version, handlers, counters, losses, alarms."""
    with _client(api, token) as hub:
        dev = _call(lambda: hub.device(device_id))
    if as_json:
        typer.echo(cli_common.to_json(dev))
    else:
        Console().print(render_fleet.device_detail(dev))


@device_app.command("label")
def device_label(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="the device")],
    labels: Annotated[list[str] | None, typer.Argument(metavar="KEY=VALUE...", help="labels to set")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", help="a label key to remove (repeatable)")] = None,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Set and remove labels of a device: hub device label dev-1 site=lyon tier=edge --remove old."""
    try:
        to_set = parse_assignments(labels or [])
        to_remove = [check_key(key) for key in remove or []]
    except LabelError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if not to_set and not to_remove:
        typer.echo("nothing to do: give KEY=VALUE labels or --remove KEY", err=True)
        raise typer.Exit(2)
    with _client(api, token) as hub:
        result = _call(lambda: hub.update_labels(device_id, to_set, to_remove))
    typer.echo(",".join(f"{k}={v}" for k, v in sorted(result.items())) or "(no labels)")


def _check_terms(terms: list[str] | None, option: str) -> None:
    try:
        Selector.parse(terms)
    except LabelError as exc:
        typer.echo(f"{option}: {exc}", err=True)
        raise typer.Exit(2) from None


def _client(api: str, token: str | None) -> HubClient:
    return cli_common.client(api, token)


def _call(request: Callable[[], T]) -> T:
    return cli_common.call(request)


def main() -> None:
    """Console-script entry point."""
    app()
