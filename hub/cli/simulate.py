"""``hub simulate``: run a fleet of virtual devices against a cloud broker (and so against the hub behind it)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edge_protocol.durations import parse_duration
from edge_protocol.topics import DEFAULT_PREFIX
from hub.cli.common import DEFAULT_URL, Api, Token, fail

LABEL_WAIT = 60.0
"""Seconds to wait for the hub to know every virtual device before labelling them."""


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


def simulate(
    devices: Annotated[int, typer.Option(min=1, help="how many virtual devices")] = 10,
    broker: Annotated[str, typer.Option(help="the cloud broker, HOST:PORT")] = "127.0.0.1:1883",
    prefix: Annotated[str, typer.Option(help="topic prefix, the hub's broker.prefix")] = DEFAULT_PREFIX,
    device_prefix: Annotated[str, typer.Option(help="device ids are PREFIX-0000, PREFIX-0001, ...")] = "sim",
    window: Annotated[str, typer.Option(help="window length of the stream sent before any desired state")] = "10s",
    rate: Annotated[float, typer.Option(min=0, help="window results per second per device")] = 1.0,
    backlog: Annotated[int, typer.Option(min=0, help="windows each device has already closed at start")] = 0,
    aligned: Annotated[bool, typer.Option(help="close all devices' windows together (default: staggered)")] = False,
    event_rate: Annotated[float, typer.Option(min=0, help="events/s each handler processes")] = 10.0,
    report_every: Annotated[str, typer.Option(help="how often each device publishes its reported state")] = "10s",
    resend_after: Annotated[str, typer.Option(help="send again what the hub has not acked after this long")] = "15s",
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="records per aggregates message")] = 200,
    hub_key: Annotated[Path | None, typer.Option(help="the hub's public key: verify desired state")] = None,
    admit_tags: Annotated[bool, typer.Option(help="run images named by tag (agents refuse them)")] = False,
    broken_image: Annotated[str | None, typer.Option(help="fnmatch pattern of images that fail")] = None,
    broken_mode: Annotated[str, typer.Option(help="refuse: update refused; errors: half the events fail")] = "refuse",
    labels: Annotated[
        list[str] | None, typer.Option("--labels", help="k=v set on every device through the API")
    ] = None,
    api: Api = DEFAULT_URL,
    token: Token = None,
    duration: Annotated[str | None, typer.Option(help="stop after this long (default: at Ctrl-C)")] = None,
    every: Annotated[str, typer.Option(help="how often progress is printed")] = "5s",
    record: Annotated[Path | None, typer.Option(help="write 'window id<TAB>first publish time' lines here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="progress as JSON lines")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
) -> None:
    """Run N virtual devices in this process: status, reported state, windows of aggregates, desired state."""
    from fleet_simulator.fleet import Fleet, SimConfig, human, raise_open_files
    from fleet_simulator.state import Behaviour
    from hub.fleet.labels import LabelError, parse_assignments

    host, _, port = broker.rpartition(":")
    if not host or not port.isdigit():
        raise fail(f"--broker {broker!r}: write HOST:PORT")
    if broken_mode not in ("refuse", "errors"):
        raise fail("--broken-mode: refuse or errors")
    try:
        wanted = parse_assignments(labels or [])
        seconds = {
            name: parse_duration(value)
            for name, value in (
                ("window", window),
                ("report_every", report_every),
                ("resend_after", resend_after),
                ("every", every),
            )
        }
        stop_after = parse_duration(duration) if duration is not None else None
        key = _load_key(hub_key) if hub_key is not None else None
        config = SimConfig(
            host=host, port=int(port), prefix=prefix, devices=devices, device_prefix=device_prefix,
            window=seconds["window"], rate=rate, backlog=backlog, aligned=aligned, batch=batch,
            report_every=seconds["report_every"], resend_after=seconds["resend_after"],
            behaviour=Behaviour(event_rate=event_rate, broken=broken_image, broken_mode=broken_mode,  # type: ignore[arg-type]
                                admit_tags=admit_tags),
        )  # fmt: skip
        fleet = Fleet(config, key=key, record=record)
    except (LabelError, ValueError, OSError) as exc:
        raise fail(f"hub simulate: {exc}") from None
    if seconds["window"] <= 0:
        raise fail("--window must be longer than zero")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    soft, hard = raise_open_files(devices + 256)
    if soft < devices + 64:
        typer.echo(f"warning: {soft} open files allowed (hard limit {hard}) for {devices} devices", err=True)

    def emit(line: dict[str, Any]) -> None:
        typer.echo(json.dumps(line) if as_json else human(line))
        sys.stdout.flush()

    async def label(ids: list[str]) -> None:
        if not wanted:
            return
        count = await asyncio.to_thread(_label_devices, api, token, ids, wanted)
        if as_json:
            emit({"event": "labelled", "devices": count, "labels": wanted})
        else:
            typer.echo(f"labelled {count} devices {','.join(f'{k}={v}' for k, v in wanted.items())}")

    async def main() -> None:
        from mqtt_session.signals import handle_signals

        stop = asyncio.Event()
        restore = handle_signals(asyncio.get_running_loop(), lambda _signum: stop.set())
        try:
            await fleet.run(stop, emit, duration=stop_after, every=seconds["every"], on_ready=label)
        finally:
            restore()

    asyncio.run(main())


def _load_key(path: Path) -> Any:
    from edge_protocol.desired import load_public_key

    return load_public_key(path.read_text())


def _label_devices(api: str, token: str | None, ids: list[str], labels: dict[str, str]) -> int:
    """Wait until the hub knows every device (its first status), then set ``labels`` on each."""
    from hub.cli import common as cli_common

    with cli_common.client(api, token) as hub:
        deadline = time.monotonic() + LABEL_WAIT
        while {d.id for d in cli_common.call(hub.devices)} < set(ids):
            if time.monotonic() > deadline:
                raise fail(f"the hub at {api} does not know every device after {LABEL_WAIT:.0f}s", 1)
            time.sleep(1.0)
        for device in ids:
            cli_common.call(lambda d=device: hub.update_labels(d, labels, []))  # type: ignore[misc]
    return len(ids)
