"""``hub release ...`` and ``hub rollout ...``: handler releases by digest and staged rollouts, through the API."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live

from hub.cli import common as cli_common
from hub.cli.common import DEFAULT_URL, Api, AsJson, Token, call, fail
from hub.cli.render import rollouts as render_rollouts
from hub.rollouts.plan import ACTIVE

release_app = typer.Typer(help="Releases: a handler's versions, each an image by digest.", no_args_is_help=True)
rollout_app = typer.Typer(
    help="Rollouts: move devices to a release step by step, gated on health.", no_args_is_help=True
)

Handler = Annotated[str, typer.Argument(metavar="HANDLER")]
RolloutId = Annotated[int, typer.Argument(metavar="ID", help="the rollout's id (hub rollout list)")]


@release_app.command("add")
def release_add(
    handler: Handler,
    version: Annotated[str, typer.Argument(metavar="VERSION")],
    image: Annotated[
        str | None, typer.Option(help="host:port/repo:tag (the hub resolves its digest) or repo@sha256:...")
    ] = None,
    local_id: Annotated[str | None, typer.Option(help="sha256:... id of an image never pushed to a registry")] = None,
    as_json: AsJson = False,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Record a release: hub release add temp-c 1.1 --image 127.0.0.1:5000/temp-c:1.1."""
    if (image is None) == (local_id is None):
        raise fail("give --image or --local-id (one of them)")
    with cli_common.client(api, token) as hub:
        release = call(lambda: hub.add_release(handler, version, image=image, local_id=local_id))
    if as_json:
        typer.echo(cli_common.to_json(release))
    else:
        typer.echo(f"release {release.handler} {release.version}: {release.image}")


@release_app.command("list")
def release_list(handler: Handler, as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """List a handler's releases; the stable one is what devices run unless a rollout moved them."""
    with cli_common.client(api, token) as hub:
        rows = call(lambda: hub.releases(handler))
    if as_json:
        typer.echo(cli_common.to_json(rows))
    else:
        Console().print(render_rollouts.releases_table(rows))


@rollout_app.command("start")
def rollout_start(
    handler: Handler,
    release: Annotated[str, typer.Option(help="the release version to roll out")],
    target: Annotated[list[str] | None, typer.Option(help="devices with label k=v (repeatable; none: all)")] = None,
    canary: Annotated[int | None, typer.Option(min=0, help="devices in the first step (default 1)")] = None,
    batch: Annotated[str | None, typer.Option(help="devices per later step: 2 or 25% (default 25%)")] = None,
    soak: Annotated[str | None, typer.Option(help="how long each healthy device is watched (default 30s)")] = None,
    max_error_rate: Annotated[float | None, typer.Option(help="errors / events during the soak (0.05)")] = None,
    max_lag_ms: Annotated[float | None, typer.Option(help="largest processing lag during the soak (1000)")] = None,
    health_timeout: Annotated[str | None, typer.Option(help="time to report healthy (default 120s)")] = None,
    min_events: Annotated[
        int | None,
        typer.Option(min=0, help="events a device must handle during its soak; fewer is 'no data' (default 10)"),
    ] = None,
    as_json: AsJson = False,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Start a rollout: hub rollout start temp-c --release 1.1 --target site=lab --canary 1 --batch 25%."""
    cli_common.check_target(target)
    given: dict[str, Any] = {
        "canary": canary,
        "batch": batch,
        "soak": soak,
        "max_error_rate": max_error_rate,
        "max_lag_ms": max_lag_ms,
        "health_timeout": health_timeout,
        "min_events": min_events,
    }
    body = {"handler": handler, "release": release, "target": target or []}
    body.update({key: value for key, value in given.items() if value is not None})
    with cli_common.client(api, token) as hub:
        rollout = call(lambda: hub.start_rollout(body))
    if as_json:
        typer.echo(cli_common.to_json(rollout))
        return
    sizes = ", ".join(str(len(step)) for step in rollout.steps)
    typer.echo(f"rollout {rollout.id} started: {handler} {rollout.previous_release} -> {rollout.release}, "
               f"{rollout.planned} devices in {len(rollout.steps)} steps ({sizes})")  # fmt: skip


@rollout_app.command("status")
def rollout_status(
    rollout_id: RolloutId,
    watch: Annotated[bool, typer.Option("--watch", help="refresh every second until it stops")] = False,
    as_json: AsJson = False,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show a rollout: a progress bar, its step and every device's gate (--json for scripts)."""
    with cli_common.client(api, token) as hub:
        rollout = call(lambda: hub.rollout(rollout_id))
        if as_json:
            typer.echo(cli_common.to_json(rollout))
            return
        if not watch:
            Console().print(render_rollouts.rollout_detail(rollout))
            return
        with Live(render_rollouts.rollout_detail(rollout), refresh_per_second=2) as live:
            while rollout.state in ACTIVE:
                time.sleep(1.0)
                rollout = call(lambda: hub.rollout(rollout_id))
                live.update(render_rollouts.rollout_detail(rollout))


@rollout_app.command("list")
def rollout_list(
    handler: Annotated[str | None, typer.Option(help="only rollouts of this handler")] = None,
    as_json: AsJson = False,
    api: Api = DEFAULT_URL,
    token: Token = None,
) -> None:
    """List rollouts, newest first."""
    with cli_common.client(api, token) as hub:
        rows = call(lambda: hub.rollouts(handler))
    if as_json:
        typer.echo(cli_common.to_json(rows))
    else:
        Console().print(render_rollouts.rollouts_table(rows))


def _control(command: str, rollout_id: int, as_json: bool, api: str, token: str | None) -> None:
    with cli_common.client(api, token) as hub:
        rollout = call(lambda: hub.control_rollout(rollout_id, command))
    if as_json:
        typer.echo(cli_common.to_json(rollout))
        return
    moved = ", ".join(f"{v.device} v{v.version}" for v in rollout.desired)
    typer.echo(f"rollout {rollout.id}: {rollout.state.value}" + (f"; desired state: {moved}" if moved else ""))


@rollout_app.command("pause")
def rollout_pause(rollout_id: RolloutId, as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """Stop advancing; devices stay where they are until resume."""
    _control("pause", rollout_id, as_json, api, token)


@rollout_app.command("resume")
def rollout_resume(rollout_id: RolloutId, as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """Go on from the current step (its health and soak clocks start over)."""
    _control("resume", rollout_id, as_json, api, token)


@rollout_app.command("abort")
def rollout_abort(rollout_id: RolloutId, as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """Stop for good; devices stay on the release they run (undo puts them back)."""
    _control("abort", rollout_id, as_json, api, token)


@rollout_app.command("undo")
def rollout_undo(rollout_id: RolloutId, as_json: AsJson = False, api: Api = DEFAULT_URL, token: Token = None) -> None:
    """Put every device the rollout moved back on its previous release (new desired versions)."""
    _control("undo", rollout_id, as_json, api, token)
