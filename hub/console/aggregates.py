"""The aggregates explorer: one statistic of one field over time, per device or for a label group, rolled up
across devices and into coarser buckets (merging the windows' states, as ``GET /v1/aggregates`` does), as a
chart, a table and a CSV download."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.

import asyncio
import csv
import dataclasses
import io
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from markupsafe import Markup
from starlette.responses import Response

from edge_protocol.durations import parse_duration
from hub.api.schemas.fleet import parse_statistics, parse_time
from hub.console.charts import Point, time_series
from hub.console.context import PREFIX, Console
from hub.console.fleet import parse_selector
from hub.console.views import SECURITY_HEADERS, iso, render
from hub.fleet.labels import LabelError
from hub.ingest.rollup import RolledUp, RollupError, rollup

STATISTICS = ("mean", "count", "sum", "min", "max", "stddev", "p50", "p90", "p95", "p99")
MAX_ROWS = 20_000
MAX_SERIES = 12
TABLE_ROWS = 50


@dataclass
class Query:
    """The explorer's form, as given (strings), and what it selected."""

    subscription: str = ""
    field: str = ""
    stat: str = "mean"
    device: str = ""
    labels: str = ""
    group: str = ""
    rollup: bool = False
    every: str = ""
    since: str = "1h"

    def encoded(self) -> str:
        """The query as a URL query string (the live refresh's and the CSV link's)."""
        params = {k: v for k, v in dataclasses.asdict(self).items() if v and k != "rollup"}
        if self.rollup:
            params["rollup"] = "devices"
        return urlencode(params)


@dataclass
class Result:
    query: Query
    rows: list[RolledUp] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    chart: Markup | None = None
    error: str | None = None
    truncated: bool = False

    def value(self, row: RolledUp) -> float | None:
        state = row.aggregate.fields.get(self.query.field)
        return None if state is None else state.statistic(self.query.stat)


def routes(console: Console) -> APIRouter:
    router = APIRouter()

    async def explore(query: Query) -> Result:
        result = Result(query)
        result.subscriptions = sorted({s.name for s in await asyncio.to_thread(console.catalog.subscriptions)})
        result.devices = [d.id for d in await asyncio.to_thread(console.devices.all)]
        try:
            await _select(console, result)
        except (ValueError, LabelError, RollupError) as exc:
            result.error, result.rows = str(exc), []
        return result

    @router.get(f"{PREFIX}/aggregates")
    async def aggregates_page(request: Request, partial: bool = False) -> Response:
        session = await console.page_session(request, partial=partial)
        result = await explore(_query(request))
        return render("_aggregates.html" if partial else "aggregates.html", session=session, r=result,
                      statistics=STATISTICS, error=result.error, status=422 if result.error else 200,
                      table=result.rows[:TABLE_ROWS], request_query=result.query.encoded(),
                      csv_query=result.query.encoded(), title="Aggregates")  # fmt: skip

    @router.get(f"{PREFIX}/aggregates.csv")
    async def aggregates_csv(request: Request) -> Response:
        await console.page_session(request)
        result = await explore(_query(request))
        if result.error:
            return Response(f"refused: {result.error}\n", status_code=422, media_type="text/plain")
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["window_start", "window_end", "device", "devices", "subscription", "group", "events",
                         "field", "statistic", "value"])  # fmt: skip
        for row in sorted(result.rows, key=lambda r: (r.aggregate.window_start, r.aggregate.device)):
            agg = row.aggregate
            value = result.value(row)
            writer.writerow([iso(agg.window_start), iso(agg.window_end), agg.device, row.devices, agg.subscription,
                             agg.group, agg.events, result.query.field, result.query.stat,
                             "" if value is None else repr(value)])  # fmt: skip
        name = f"{result.query.subscription or 'aggregates'}-{result.query.field}-{result.query.stat}.csv"
        headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{_safe(name)}"'}
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)

    return router


def _query(request: Request) -> Query:
    params = request.query_params
    defaults = Query()
    return Query(
        subscription=params.get("subscription", "").strip(),
        field=params.get("field", "").strip(),
        stat=params.get("stat", defaults.stat).strip() or defaults.stat,
        device=params.get("device", "").strip(),
        labels=params.get("labels", "").strip(),
        group=params.get("group", "").strip(),
        rollup=params.get("rollup", "") in ("1", "on", "devices", "true"),
        every=params.get("every", "").strip(),
        since=params.get("since", defaults.since).strip() or defaults.since,
    )


async def _select(console: Console, result: Result) -> None:
    """Fill ``result`` from its query: the rows (rolled up), the fields seen, and the chart. ValueError,
    LabelError or RollupError say what in the query is wrong."""
    query = result.query
    (stat,) = parse_statistics(query.stat) or ["mean"]
    query.stat = stat
    since = parse_time(query.since, now=console.clock())
    every = parse_duration(query.every) if query.every else None
    if every is not None and every <= 0:
        raise ValueError("every: must be longer than zero")
    selected = None
    selector = parse_selector(query.labels)
    if selector:
        selected = [d.id for d in await asyncio.to_thread(console.devices.all, selector)]
    rows = await asyncio.to_thread(
        console.windows.query, device=query.device or None, subscription=query.subscription or None, since=since,
        limit=MAX_ROWS, devices=selected, group=query.group or None,
    )  # fmt: skip
    result.truncated = len(rows) >= MAX_ROWS
    if not query.subscription and rows:
        query.subscription = rows[0].subscription
        rows = [r for r in rows if r.subscription == query.subscription]
    if query.subscription and query.subscription not in result.subscriptions:
        result.subscriptions.append(query.subscription)
    result.fields = sorted({name for r in rows for name in r.fields})
    if not query.field and result.fields:
        query.field = result.fields[0]
    rolled = await asyncio.to_thread(rollup, rows, across_devices=query.rollup, every=every)
    result.rows = rolled
    series: dict[str, list[Point]] = defaultdict(list)
    for row in rolled:
        agg = row.aggregate
        name = "merged" if query.rollup else agg.device
        if agg.group:
            name = f"{name} [{agg.group}]"
        series[name].append((agg.window_start, result.value(row)))
    kept = dict(sorted(series.items())[:MAX_SERIES])
    scope = query.device or (f"devices with {query.labels}" if query.labels else "every device")
    title = f"{query.subscription} {query.field}: {query.stat}, {scope}"
    result.chart = time_series(title, kept, y_title=query.stat) if query.field else None


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
