"""How the CLI shows releases and rollouts: rich tables and a progress bar (JSON is cli_common.to_json)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from edge_protocol.durations import format_duration
from hub.api.schemas.rollouts import DeviceProgressOut, ReleaseOut, RolloutOut
from hub.cli.render.aggregates import local
from hub.rollouts.plan import NO_DATA, DeviceStatus, State

_STATE_STYLE = {
    State.RUNNING: "cyan",
    State.PAUSED: "yellow",
    State.HALTED: "bold red",
    State.ABORTED: "yellow",
    State.COMPLETED: "green",
    State.UNDONE: "magenta",
}
_STATUS_STYLE = {
    DeviceStatus.PASSED: "green",
    DeviceStatus.FAILED: "bold red",
    DeviceStatus.REVERTED: "red",
    DeviceStatus.SOAKING: "cyan",
    DeviceStatus.ASSIGNED: "cyan",
}


def status_text(d: DeviceProgressOut) -> Text:
    """A device's status; a soak without enough events reads "no data" (a failure for it "failed: no data")."""
    if d.no_data:
        failed = d.status is DeviceStatus.FAILED
        return Text(f"failed: {NO_DATA}" if failed else NO_DATA, style="bold red" if failed else "yellow")
    return Text(d.status.value, style=_STATUS_STYLE.get(d.status, ""))


def _table(*columns: str) -> Table:
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column)
    return table


def releases_table(rows: list[ReleaseOut]) -> Table:
    table = _table("version", "stable", "image", "source", "created")
    for rel in rows:
        table.add_row(rel.version, "yes" if rel.stable else "", rel.image, rel.source, local(rel.created_at))
    return table


def step_text(r: RolloutOut) -> str:
    return f"{min(r.step, len(r.steps))}/{len(r.steps)}"


def rollouts_table(rows: list[RolloutOut]) -> Table:
    table = _table("id", "handler", "release", "target", "state", "step", "passed", "started", "reason")
    for r in rows:
        table.add_row(
            str(r.id),
            r.handler,
            f"{r.previous_release} -> {r.release}",
            ",".join(r.target) or "(all)",
            Text(r.state.value, style=_STATE_STYLE.get(r.state, "")),
            step_text(r),
            f"{r.passed}/{r.planned}",
            local(r.created_at),
            r.reason or "",
        )
    return table


def rollout_detail(r: RolloutOut) -> RenderableType:
    facts = _table("", "")
    facts.show_header = False
    facts.add_row("rollout", f"{r.id}: {r.handler} {r.previous_release} -> {r.release}")
    facts.add_row("image", r.image)
    facts.add_row("target", ",".join(r.target) or "(every device running it)")
    facts.add_row("state", Text(r.state.value, style=_STATE_STYLE.get(r.state, "")))
    facts.add_row("step", f"{step_text(r)} (canary {r.canary}, batches of {r.batch})")
    facts.add_row(
        "gate",
        f"soak {format_duration(r.soak)}, error rate <= {r.max_error_rate:.1%}, lag <= {r.max_lag_ms:.0f} ms, "
        f"healthy within {format_duration(r.health_timeout)}, at least {r.min_events} events",
    )
    if r.reason:
        facts.add_row("reason", r.reason)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=max(1, r.planned), completed=r.passed, width=40), f"{r.passed}/{r.planned} devices")
    devices = _table("device", "step", "status", "desired", "soak reports", "max lag", "reason")
    for d in r.devices:
        devices.add_row(
            d.device,
            str(d.step) if d.step > 0 else "-",
            status_text(d),
            "-" if d.desired_version is None else str(d.desired_version),
            str(d.soak_reports) if d.soak_started_at is not None else "-",
            "-" if d.max_lag_ms is None else f"{d.max_lag_ms:.0f} ms",
            d.reason or "",
        )
    return Group(facts, Text(""), bar, Text(""), devices)
