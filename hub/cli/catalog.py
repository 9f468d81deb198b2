"""``hub handlers ...`` and ``hub subscriptions ...``: manage what devices run, through the hub API.

The CLI sends only the options given; the hub fills defaults and validates against the shared specs, so an
invalid option is reported with its field path (``spec.window: ...``), one line per problem.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console

from hub.api.schemas.catalog import ChangeOut
from hub.cli import common as cli_common
from hub.cli.common import DEFAULT_URL, Api, AsJson, Token, call, fail
from hub.cli.render import fleet as render_fleet

handlers_app = typer.Typer(help="Handlers: the container images devices run.", no_args_is_help=True)
subscriptions_app = typer.Typer(help="Subscriptions: topic -> handler -> windows, per target.", no_args_is_help=True)

Replace = Annotated[bool, typer.Option("--replace", help="replace an existing one of that name (else: 409)")]
Name = Annotated[str, typer.Argument(metavar="NAME")]


class Network(StrEnum):
    NONE = "none"
    HOST = "host"


class WindowKind(StrEnum):
    TUMBLING = "tumbling"
    HOPPING = "hopping"
    SESSION = "session"


class Overflow(StrEnum):
    BLOCK = "block"
    DROP_OLDEST = "drop-oldest"


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _split(values: list[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``; None when not given."""
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _environment(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--env: write NAME=VALUE, got {item!r}")
        env[key.strip()] = value
    return env


def _show_change(change: ChangeOut, as_json: bool) -> None:
    typer.echo(cli_common.to_json(change) if as_json else render_fleet.change_text(change))


# -- handlers --------------------------------------------------------------------------------------------------


@handlers_app.command("add")
def handlers_add(
    name: Name,
    image: Annotated[str, typer.Option(help="image reference (repo:tag, repo@sha256:..., or a local image id)")],
    memory: Annotated[str | None, typer.Option(help="memory limit, e.g. 64m")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPU limit, e.g. 0.5")] = None,
    pids: Annotated[int | None, typer.Option(help="process limit")] = None,
    replicas: Annotated[int | None, typer.Option(help="containers per device")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="scale up to this many when busy")] = None,
    network: Annotated[Network | None, typer.Option(help="none (default) or host")] = None,
    env: Annotated[list[str] | None, typer.Option(help="K=V environment variable (repeatable)")] = None,
    event_timeout: Annotated[str | None, typer.Option(help="reply deadline per event (5s)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="events per write to the handler")] = None,
    batch_linger: Annotated[
        str | None, typer.Option(help="wait up to this for a batch to fill (0, e.g. 2ms: less CPU, later results)")
    ] = None,
    version: Annotated[str | None, typer.Option(help="release name of this image (default: initial)")] = None,
    replace: Replace = False,
    as_json: AsJson = False,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Declare a handler: hub handlers add temp-c --image edgefleet/temp-c:1 --memory 64m.

    The image is the handler's first release; a registry tag (host:port/repo:tag) is resolved to its digest."""
    environment = _environment(env)
    limits = _given(memory=memory, cpus=cpus, pids=pids)
    spec = _given(
        name=name,
        image=image,
        limits=limits or None,
        replicas=replicas,
        max_replicas=max_replicas,
        network=network.value if network else None,
        env=environment,
        event_timeout=event_timeout,
        batch_size=batch_size,
        batch_linger=batch_linger,
    )
    with cli_common.client(api, token) as hub:
        change = call(lambda: hub.put_handler(spec, replace=replace, version=version))
    _show_change(change, as_json)


@handlers_app.command("list")
def handlers_list(as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """List the handlers and the subscriptions that use them."""
    with cli_common.client(api, token) as hub:
        rows = call(hub.handlers)
    if as_json:
        typer.echo(cli_common.to_json(rows))
    else:
        Console().print(render_fleet.handlers_table(rows))


@handlers_app.command("show")
def handlers_show(name: Name, as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """Show one handler's spec."""
    with cli_common.client(api, token) as hub:
        handler = call(lambda: hub.handler(name))
    if as_json:
        typer.echo(cli_common.to_json(handler))
        return
    Console().print(render_fleet.spec_table({**handler.spec.model_dump(mode="json"), "used_by": handler.used_by}))


@handlers_app.command("remove")
def handlers_remove(name: Name, as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """Remove a handler (refused while a subscription uses it)."""
    with cli_common.client(api, token) as hub:
        change = call(lambda: hub.remove_handler(name))
    _show_change(change, as_json)


# -- subscriptions ---------------------------------------------------------------------------------------------


@subscriptions_app.command("add")
def subscriptions_add(
    name: Name,
    topic: Annotated[str, typer.Option(help="MQTT topic filter on the device broker")],
    handler: Annotated[str, typer.Option(help="the handler that processes the events")],
    target: Annotated[list[str] | None, typer.Option(help="devices with label k=v (repeatable; none: all)")] = None,
    window: Annotated[str | None, typer.Option(help="window size (default 10s)")] = None,
    window_kind: Annotated[WindowKind | None, typer.Option(help="tumbling (default), hopping or session")] = None,
    hop: Annotated[str | None, typer.Option(help="hop of a hopping window")] = None,
    gap: Annotated[str | None, typer.Option(help="inactivity gap of a session window")] = None,
    stats: Annotated[str | None, typer.Option(help="statistics, e.g. count,mean,max,p99")] = None,
    fields: Annotated[str | None, typer.Option(help="result fields to aggregate, e.g. a,b (default: all)")] = None,
    group_by: Annotated[list[str] | None, typer.Option(help="'topic[N]' or a field (repeatable)")] = None,
    event_time_field: Annotated[str | None, typer.Option(help="payload field with epoch seconds")] = None,
    lateness: Annotated[str | None, typer.Option(help="allowed lateness, e.g. 2s")] = None,
    key: Annotated[str | None, typer.Option(help="'topic[N]' or a field: keeps each key's events in order")] = None,
    overflow: Annotated[Overflow | None, typer.Option(help="block (default) or drop-oldest")] = None,
    queue_size: Annotated[int | None, typer.Option(help="events queued per subscription")] = None,
    qos: Annotated[int | None, typer.Option(min=0, max=1, help="0 or 1 (default) on the device broker")] = None,
    replace: Replace = False,
    as_json: AsJson = False,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Add a subscription: hub subscriptions add temp-lab --target site=lab --topic 'sensors/+/t' --handler temp-c."""
    cli_common.check_target(target)
    win = _given(kind=window_kind.value if window_kind else None, size=window, hop=hop, gap=gap)
    spec = _given(
        name=name,
        topic=topic,
        handler=handler,
        window=win or None,
        stats=_split([stats] if stats else None),
        fields=_split([fields] if fields else None),
        group_by=_split(group_by),
        event_time_field=event_time_field,
        lateness=lateness,
        key=key,
        overflow=overflow.value if overflow else None,
        queue_size=queue_size,
        qos=qos,
    )
    with cli_common.client(api, token) as hub:
        change = call(lambda: hub.put_subscription(target or [], spec, replace=replace))
    _show_change(change, as_json)


@subscriptions_app.command("list")
def subscriptions_list(as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """List the subscriptions with their targets."""
    with cli_common.client(api, token) as hub:
        rows = call(hub.subscriptions)
    if as_json:
        typer.echo(cli_common.to_json(rows))
    else:
        Console().print(render_fleet.subscriptions_table(rows))


@subscriptions_app.command("show")
def subscriptions_show(name: Name, as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """Show one subscription's target and spec."""
    with cli_common.client(api, token) as hub:
        sub = call(lambda: hub.subscription(name))
    if as_json:
        typer.echo(cli_common.to_json(sub))
        return
    target = render_fleet.labels_text(sub.target) or "(all devices)"
    Console().print(render_fleet.spec_table({"target": target, **sub.spec.model_dump(mode="json")}))


@subscriptions_app.command("remove")
def subscriptions_remove(name: Name, as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """Remove a subscription; the devices it targeted stop running it."""
    with cli_common.client(api, token) as hub:
        change = call(lambda: hub.remove_subscription(name))
    _show_change(change, as_json)
