"""The hub's HTTP API (FastAPI). The CLI and, later, the web console use it; nothing else reads the store.

``/healthz`` and ``/metrics`` are open (for probes and scrapers; they reveal no fleet data); everything under
``/v1`` needs ``Authorization: Bearer <token>``: a token stored with ``hub token create`` (production) or the
config's ``[api] token`` (development). The API fails closed: once the hub has had a token it needs one for
good, even after the last stored token is revoked (:mod:`hub.security.tokens`); only a hub that never had one
is open, and ``hub serve`` allows that on loopback only (:mod:`hub.api.auth`). The console (``/console``)
checks tokens the same way. Errors never echo the store's URL or a database message to a caller who has not
passed the token check (:mod:`hub.api.errors`).
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime.

import asyncio
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from edge_protocol.aggregate import FieldState
from edge_protocol.clocks import STEADY_WALL
from edge_protocol.durations import parse_duration
from hub import __version__
from hub import metrics as _metrics  # noqa: F401 - registers the hub's counters even before ingest runs
from hub.api.auth import API_PREFIX, TokenCheck
from hub.api.errors import install_error_handlers
from hub.api.routes.catalog import catalog_router
from hub.api.routes.fleet import fleet_router, selector_of
from hub.api.routes.releases import releases_router
from hub.api.schemas.fleet import AggregateOut, FieldSummary, parse_statistics, parse_time
from hub.console import install_console
from hub.db.store import Store
from hub.desired.image_registry import DigestResolver
from hub.desired.publisher import DesiredPublisher
from hub.fleet.devices import Devices
from hub.ingest.aggregates import Aggregates, StoredAggregate
from hub.ingest.rollup import RollupError, rollup

MAX_LIMIT = 10_000

_TIME_HELP = "epoch seconds, a duration ago (10m, 1h30m), or ISO 8601 with a time zone"
_LABEL_HELP = "key=value; repeat it and every term must match the device's labels"


def create_app(
    store: Store,
    token: str | None = None,
    *,
    clock: Callable[[], float] = STEADY_WALL.now,
    desired: DesiredPublisher | None = None,
    resolver: DigestResolver | None = None,
    leases: Callable[[], list[str]] | None = None,
) -> FastAPI:
    """The API over ``store``; every /v1 endpoint requires a bearer token, ``token`` or one of the store's,
    unless the hub never had one (:mod:`hub.api.auth`).

    ``desired`` compiles and publishes desired state after changes; without it (no signing key) handler,
    subscription and rollout changes are refused with 409. ``resolver`` resolves image tags to registry
    digests (tests give it a fake transport). ``leases`` names the singleton jobs this replica
    runs now (:mod:`hub.leases`), for ``/healthz``."""
    resolver = resolver or DigestResolver()
    app = FastAPI(title="edgefleet hub", version=__version__)
    devices, windows = Devices(store), Aggregates(store)
    check = TokenCheck(store, token)
    install_error_handlers(app, store, check)

    def to_time(value: str | None, name: str) -> float | None:
        if value is None:
            return None
        try:
            return parse_time(value, now=clock())
        except ValueError as exc:
            raise HTTPException(422, f"{name}: {exc}") from exc

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str | list[str]]:
        """200 when the store answers, 503 otherwise; with the leases this replica holds, when it has leases."""
        await asyncio.to_thread(store.ping)
        if leases is None:
            return {"status": "ok"}
        return {"status": "ok", "leases": leases()}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text exposition of the hub's counters."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    v1 = APIRouter(prefix=API_PREFIX, dependencies=[Depends(check.require)])

    @v1.get("/aggregates", tags=["aggregates"])
    async def aggregates(
        device: str | None = None,
        subscription: str | None = None,
        since: Annotated[str | None, Query(description=f"windows starting at or after: {_TIME_HELP}")] = None,
        until: Annotated[str | None, Query(description=f"windows starting before: {_TIME_HELP}")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many rows")] = 100,
        label: Annotated[list[str] | None, Query(description=f"devices with this label: {_LABEL_HELP}")] = None,
        group: Annotated[str | None, Query(description="only this group key")] = None,
        rollup_: Annotated[
            Literal["devices"] | None, Query(alias="rollup", description="merge the same window across devices")
        ] = None,
        every: Annotated[str | None, Query(description="merge windows into tumbling buckets this long (1m)")] = None,
        stats: Annotated[list[str] | None, Query(description="statistics to show, e.g. count,mean,p99")] = None,
    ) -> list[AggregateOut]:
        """Stored window results, newest window first; optionally rolled up across devices and/or into coarser
        buckets, merging the windows' states (never averaging finished figures)."""
        chosen, bucket, selector = _statistics(stats), _bucket(every), selector_of(label)
        selected = None
        if selector:
            selected = [dev.id for dev in await asyncio.to_thread(devices.all, selector)]
            if not selected:
                return []
        rolling = rollup_ is not None or bucket is not None
        rows = await asyncio.to_thread(
            windows.query,
            device=device,
            subscription=subscription,
            since=to_time(since, "since"),
            until=to_time(until, "until"),
            limit=None if rolling else limit,
            devices=selected,
            group=group,
        )
        try:
            rolled = await asyncio.to_thread(rollup, rows, across_devices=rollup_ == "devices", every=bucket)
        except RollupError as exc:
            raise HTTPException(422, str(exc)) from exc
        return [_aggregate_out(r.aggregate, chosen, r.devices) for r in rolled[:limit]]

    v1.include_router(fleet_router(store, desired))
    v1.include_router(catalog_router(store, desired, clock, resolver))
    v1.include_router(releases_router(store, desired, clock, resolver))
    app.include_router(v1)
    install_console(app, store, token, desired=desired, clock=clock)  # the web console, /console
    return app


def _statistics(stats: list[str] | None) -> list[str] | None:
    try:
        return parse_statistics(stats)
    except ValueError as exc:
        raise HTTPException(422, f"stats: {exc}") from exc


def _bucket(every: str | None) -> float | None:
    if every is None:
        return None
    try:
        seconds = parse_duration(every)
    except ValueError as exc:
        raise HTTPException(422, f"every: {exc}") from exc
    if seconds <= 0:
        raise HTTPException(422, "every: must be longer than zero")
    return seconds


# Records to JSON shapes: here, beside their route, so that the schemas (shared with the CLI) import no storage.


def _aggregate_out(agg: StoredAggregate, stats: list[str] | None, devices: int) -> AggregateOut:
    shown = list(agg.stats) if stats is None else stats
    return AggregateOut(
        window_id=agg.window_id,
        device=agg.device,
        subscription=agg.subscription,
        revision=agg.revision,
        group=agg.group,
        window_start=agg.window_start,
        window_end=agg.window_end,
        part=agg.part,
        events=agg.events,
        stats=shown,
        fields={name: _field_summary(state, shown) for name, state in agg.fields.items()},
        stored_at=agg.stored_at,
        devices=devices,
        parts=agg.parts,
    )


def _field_summary(state: FieldState, stats: list[str]) -> FieldSummary:
    return FieldSummary(
        count=state.count,
        sum=state.sum,
        min=state.min,
        max=state.max,
        mean=state.mean,
        stddev=state.stddev,
        stats={name: state.statistic(name) for name in stats},
        state=state,
    )
