"""How the CLI shows aggregates: rich tables for people, CSV for scripts (devices: :mod:`hub.cli.render.fleet`)."""

from __future__ import annotations

import csv
from datetime import datetime
from typing import TextIO

from rich.table import Table

from hub.api.schemas.fleet import AggregateOut, FieldSummary

DEFAULT_STATS = ("count", "mean", "min", "max", "sum")
CSV_COLUMNS = (
    "window_start",
    "window_end",
    "device",
    "devices",
    "subscription",
    "revision",
    "group",
    "events",
    "field",
)


def shown_stats(rows: list[AggregateOut]) -> list[str]:
    """The statistics columns: every row's shown stats in first-seen order, or the usual five."""
    names: list[str] = []
    for row in rows:
        names.extend(name for name in row.stats if name not in names)
    return names or list(DEFAULT_STATS)


def statistic(summary: FieldSummary, name: str) -> float | None:
    """A field's statistic: as the API computed it, else from its mergeable state (None: no sketch)."""
    if name in summary.stats:
        return summary.stats[name]
    return summary.state.statistic(name)


def _text(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if name == "count" else f"{value:.6g}"


def aggregates_table(rows: list[AggregateOut], *, with_devices: bool = False) -> Table:
    """One line per window and field; the window's columns only on its first line, so windows stand out."""
    stats = shown_stats(rows)
    table = Table(box=None, header_style="bold")
    lead_columns = ["window start", "device", *(["devices"] if with_devices else []), "subscription", "group"]
    for column in (*lead_columns, "events", "field"):
        table.add_column(column, no_wrap=column == "window start")
    for column in stats:
        table.add_column(column, justify="right")
    for row in rows:
        window = [local(row.window_start), row.device]
        if with_devices:
            window.append(str(row.devices))
        window += [row.subscription, row.group, str(row.events)]
        if not row.fields:
            table.add_row(*window)
        for i, (name, summary) in enumerate(sorted(row.fields.items())):
            lead = window if i == 0 else [""] * len(window)
            table.add_row(*lead, name, *(_text(stat, statistic(summary, stat)) for stat in stats))
    return table


def write_aggregates_csv(rows: list[AggregateOut], out: TextIO) -> None:
    """A header, then one line per window and field; times in epoch seconds, a missing statistic empty."""
    stats = shown_stats(rows)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *stats])
    for row in rows:
        lead = [
            row.window_start,
            row.window_end,
            row.device,
            row.devices,
            row.subscription,
            row.revision,
            row.group,
            row.events,
        ]
        if not row.fields:
            writer.writerow([*lead, "", *([""] * len(stats))])
        for name, summary in sorted(row.fields.items()):
            writer.writerow([*lead, name, *(_plain(stat, statistic(summary, stat)) for stat in stats)])


def _plain(name: str, value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if name == "count" else repr(value)


def local(epoch: float) -> str:
    """An epoch time in the local time zone, to the second."""
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")
