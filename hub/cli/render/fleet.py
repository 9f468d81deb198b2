"""How the CLI shows devices, handlers, subscriptions and changes (rich tables; JSON is cli_common.to_json)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table

from edge_protocol.durations import format_duration
from hub.api.schemas.catalog import ChangeOut, HandlerOut, SubscriptionOut
from hub.api.schemas.fleet import DeviceDetailOut, DeviceOut
from hub.cli.render.aggregates import local


def _table(*columns: str) -> Table:
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column)
    return table


def labels_text(labels: dict[str, str] | list[str]) -> str:
    if isinstance(labels, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return ",".join(labels)


def versions(dev: DeviceOut) -> str:
    """``applied/desired``, ``-`` for a missing side: ``2/3`` is a device one version behind."""
    applied = "-" if dev.applied_version is None else str(dev.applied_version)
    wanted = "-" if dev.desired_version is None else str(dev.desired_version)
    return f"{applied}/{wanted}"


def devices_table(rows: list[DeviceOut]) -> Table:
    table = _table("device", "labels", "online", "last seen", "applied/desired", "handlers", "alarms", "losses")
    for dev in rows:
        handlers = ",".join(
            f"{h.name}:{'ok' if h.healthy else 'FAIL'}" + (f" x{h.replicas}" if h.replicas != 1 else "")
            for h in dev.handlers
        )
        table.add_row(
            dev.id,
            labels_text(dev.labels),
            "yes" if dev.online else "no",
            local(dev.last_seen),
            versions(dev),
            handlers or "-",
            _alarms(dev.alarms),
            str(dev.losses_total),
        )
    return table


def device_detail(dev: DeviceOut | DeviceDetailOut) -> RenderableType:
    facts = _table("", "")
    facts.show_header = False
    facts.add_row("device", dev.id)
    facts.add_row("online", f"{'yes' if dev.online else 'no'} (agent {dev.agent_version or '?'})")
    facts.add_row("labels", labels_text(dev.labels) or "-")
    facts.add_row("first / last seen", f"{local(dev.first_seen)} / {local(dev.last_seen)}")
    facts.add_row("applied / desired", versions(dev))
    facts.add_row("reported at", local(dev.reported_at) if dev.reported_at is not None else "never")
    parts: list[RenderableType] = [facts]
    if isinstance(dev, DeviceDetailOut):
        facts.add_row("outbox pending", str(dev.outbox_pending))
        facts.add_row("alarms", _alarms(dev.alarms))
        facts.add_row("desired state expires", local(dev.desired_expires_at) if dev.desired_expires_at else "never")
        facts.add_row("last refusal", dev.last_refusal or "-")
        updates = "; ".join(
            f"{h.name} -> {h.update_failed_image}: {h.update_error}" for h in dev.handlers if h.update_error
        )
        facts.add_row("handler update refused", updates or "-")
        refusals = ", ".join(f"{reason}: {n}" for reason, n in sorted(dev.desired_refusals.items()))
        facts.add_row("desired state refused", refusals or "-")
        refused = ", ".join(f"{reason}: {n}" for reason, n in sorted(dev.refused.items()))
        facts.add_row("windows refused by the hub", refused or "-")
    handlers = _table(
        "handler",
        "image",
        "healthy",
        "state",
        "restarts",
        "oom kills",
        "replicas P",
        "arrivals E/s",
        "per replica m/s",
        "errors",
        "lag ms",
        "container",
    )
    for h in dev.handlers:
        healthy = "yes" if h.healthy else "NO"
        handlers.add_row(
            h.name,
            h.image,
            healthy,
            h.state,
            str(h.restarts),
            str(h.oom_kills),
            str(h.replicas),
            _rate(h.arrival_rate),
            _rate(h.capacity_per_replica),
            str(h.errors),
            _rate(h.lag_ms),
            (h.container or "-")[:12],
        )
    parts += ["", handlers]
    if isinstance(dev, DeviceDetailOut):
        subs = _table("subscription", "received", "processed", "dead letters", "dropped", "redelivered", "windows")
        subs.add_column("published")
        subs.add_column("backlog")
        for name, c in sorted(dev.subscriptions.items()):
            dead = ",".join(f"{r}:{n}" for r, n in sorted(c.dead_lettered.items())) or "0"
            numbers = (c.received, c.processed, dead, c.dropped_overflow, c.redelivered, c.windows_closed)
            subs.add_row(name, *(str(n) for n in numbers), str(c.published), str(c.backlog))
        losses = _table("subscription", "reason", "records lost")
        for name, reasons in sorted(dev.losses.items()):
            for reason, count in sorted(reasons.items()):
                losses.add_row(name, reason, str(count))
        parts += ["", subs, "", losses if losses.row_count else "no losses"]
    return Group(*parts)


def handlers_table(rows: list[HandlerOut]) -> Table:
    table = _table("handler", "image", "replicas", "memory", "cpus", "pids", "network", "used by")
    for h in rows:
        s = h.spec
        replicas = str(s.replicas) if s.max_replicas is None else f"{s.replicas}-{s.max_replicas}"
        table.add_row(
            h.name,
            s.image,
            replicas,
            s.limits.memory,
            f"{s.limits.cpus:g}",
            str(s.limits.pids),
            s.network,
            ",".join(h.used_by) or "-",
        )
    return table


def subscriptions_table(rows: list[SubscriptionOut]) -> Table:
    table = _table("subscription", "target", "topic", "handler", "window", "stats")
    for sub in rows:
        s = sub.spec
        target = labels_text(sub.target) or "(all)"
        table.add_row(sub.name, target, s.topic, s.handler, window_text(sub), ",".join(s.stats))
    return table


def window_text(sub: SubscriptionOut) -> str:
    w = sub.spec.window
    if w.kind == "hopping" and w.hop is not None:
        return f"hopping {format_duration(w.size)} every {format_duration(w.hop)}"
    if w.kind == "session" and w.gap is not None:
        return f"session, gap {format_duration(w.gap)}"
    return f"tumbling {format_duration(w.size)}"


def spec_table(spec: dict[str, object]) -> Table:
    """A spec's fields as ``key value`` lines, nested keys dotted (``limits.memory``)."""
    table = _table("", "")
    table.show_header = False
    for key, value in _flatten(spec):
        table.add_row(key, value)
    return table


def _flatten(value: dict[str, object], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, item in value.items():
        if isinstance(item, dict) and item:
            out += _flatten(item, f"{prefix}{key}.")
        elif isinstance(item, dict):
            out.append((f"{prefix}{key}", "-"))
        elif isinstance(item, list):
            out.append((f"{prefix}{key}", ",".join(str(v) for v in item) or "-"))
        else:
            out.append((f"{prefix}{key}", "-" if item is None else str(item)))
    return out


def change_text(change: ChangeOut) -> str:
    """``handler temp-c created; desired state: dev-a v3, dev-b v2`` (or ``no device affected``)."""
    kind, name = ("handler", change.handler.name) if change.handler else ("subscription", "?")
    if change.subscription is not None:
        kind, name = "subscription", change.subscription.name
    made = ", ".join(f"{v.device} v{v.version}" for v in change.desired)
    return f"{kind} {name} {change.action}; " + (f"new desired state: {made}" if made else "no device's state changed")


def _alarms(alarms: list[str]) -> str:
    """The alarms, an expired desired state (the device runs it on, unrenewed) spelt out in red."""
    shown = ["[red]desired state EXPIRED[/]" if a == "desired-expired" else a for a in alarms]
    return ", ".join(shown) or "-"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
