"""The fleet page (every device, filtered by labels) and a device's page (handlers, subscriptions, losses,
and its recent windows as charts)."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.

import asyncio
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from markupsafe import Markup
from starlette.responses import Response

from hub.console.charts import Point, time_series
from hub.console.context import PREFIX, Console
from hub.console.views import render
from hub.fleet.labels import LabelError, Selector
from hub.fleet.registry import DeviceView
from hub.ingest.aggregates import StoredAggregate

RECENT = 3600.0
"""Seconds of a device's windows its page charts."""
MAX_WINDOWS = 600
MAX_SERIES = 8


@dataclass(frozen=True, slots=True)
class Chart:
    subscription: str
    statistic: str
    svg: Markup | None
    points: int
    latest: dict[str, float | None]


def parse_selector(text: str) -> Selector:
    """``site=lab tier=edge`` (spaces or commas between terms) as a selector; LabelError says what is wrong."""
    terms = [term for term in re.split(r"[\s,]+", text.strip()) if term]
    return Selector.parse(terms)


def routes(console: Console) -> APIRouter:
    router = APIRouter()

    @router.get(f"{PREFIX}/fleet")
    async def fleet_page(request: Request, labels: str = "", partial: bool = False) -> Response:
        session = await console.page_session(request, partial=partial)
        error, views = None, []
        try:
            selector = parse_selector(labels)
        except LabelError as exc:
            error, selector = f"label filter: {exc}", None
        if selector is not None:
            views = await asyncio.to_thread(console.fleet.devices, selector)
        online = sum(v.info.online for v in views)
        context: dict[str, Any] = {"views": views, "labels": labels, "online": online, "offline": len(views) - online,
                   "now": console.clock(), "title": "Fleet"}  # fmt: skip
        return render("_fleet.html" if partial else "fleet.html", session=session, error=error,
                      status=422 if error else 200, **context)  # fmt: skip

    @router.get(f"{PREFIX}/devices/{{device_id}}")
    async def device_page(request: Request, device_id: str, partial: bool = False) -> Response:
        session = await console.page_session(request, partial=partial)
        view = await asyncio.to_thread(console.fleet.device, device_id)
        if view is None:
            return render("refused.html", session=session, status=404, title="Unknown device",
                          error=f"unknown device {device_id!r}: the hub has not heard from it")  # fmt: skip
        now = console.clock()
        rows = await asyncio.to_thread(console.windows.query, device=device_id, since=now - RECENT,
                                       limit=MAX_WINDOWS)  # fmt: skip
        context: dict[str, Any] = {"view": view, "charts": charts_of(rows), "now": now, "title": f"Device {device_id}",
                   "in_sync": in_sync(view)}  # fmt: skip
        return render("_device.html" if partial else "device.html", session=session, **context)

    return router


def in_sync(view: DeviceView) -> str:
    """Whether the device runs the desired state the hub compiled for it, in words."""
    if view.desired_version is None:
        return "no desired state (unmanaged, or the hub has no signing key)"
    if view.applied_version is None:
        return "not applied yet"
    if view.applied_version >= view.desired_version:
        return "in sync"
    return f"behind: applies {view.applied_version}, desired {view.desired_version}"


def charts_of(rows: list[StoredAggregate], statistic: str = "mean") -> list[Chart]:
    """One chart per subscription: ``statistic`` of each field (per group when there are several) per window."""
    by_sub: dict[str, dict[str, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for name, state in row.fields.items():
            key = name if row.group in ("", "_") else f"{name} [{row.group}]"
            by_sub[row.subscription][key].append((row.window_start, state.statistic(statistic)))
    charts = []
    for sub, series in sorted(by_sub.items()):
        kept = dict(sorted(series.items())[:MAX_SERIES])
        latest = {name: max(points)[1] for name, points in kept.items()}
        svg = time_series(f"{sub}: {statistic} per window", kept, y_title=statistic)
        charts.append(Chart(sub, statistic, svg, sum(len(p) for p in kept.values()), latest))
    return charts
