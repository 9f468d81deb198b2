"""The hub's HTTP API (FastAPI). The CLI and, later, the web console use it; nothing else reads the store.

``/healthz`` and ``/metrics`` are open (for probes and scrapers; they reveal no fleet data); everything under
``/v1`` needs ``Authorization: Bearer <token>`` when the hub has a token.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime, and the
# token dependency refers to a local of create_app that a string annotation could not resolve.

import asyncio
import hmac
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from hub import __version__
from hub import metrics as _metrics  # noqa: F401 - registers the hub's counters even before ingest runs
from hub.errors import StoreError
from hub.schemas import AggregateOut, DeviceOut, parse_time
from hub.store import Store

MAX_LIMIT = 10_000

_TIME_HELP = "epoch seconds, a duration ago (10m, 1h30m), or ISO 8601 with a time zone"


def create_app(store: Store, token: str | None = None, *, clock: Callable[[], float] = time.time) -> FastAPI:
    """The API over ``store``; with a ``token``, every /v1 endpoint requires it as a bearer token."""
    app = FastAPI(title="edgefleet hub", version=__version__)
    bearer = HTTPBearer(auto_error=False, description="the hub's api.token")
    expected = token.encode() if token else None

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if expected is None:
            return
        # compare_digest: the time taken must not reveal how much of a guessed token was right.
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def to_time(value: str | None, name: str) -> float | None:
        if value is None:
            return None
        try:
            return parse_time(value, now=clock())
        except ValueError as exc:
            raise HTTPException(422, f"{name}: {exc}") from exc

    @app.exception_handler(StoreError)
    async def _store_unavailable(_request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": f"the store is unavailable: {exc.reason}"}, status_code=503)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """200 when the store answers, 503 otherwise."""
        await asyncio.to_thread(store.ping)
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text exposition of the hub's counters."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @v1.get("/aggregates", tags=["aggregates"])
    async def aggregates(
        device: str | None = None,
        subscription: str | None = None,
        since: Annotated[str | None, Query(description=f"windows starting at or after: {_TIME_HELP}")] = None,
        until: Annotated[str | None, Query(description=f"windows starting before: {_TIME_HELP}")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    ) -> list[AggregateOut]:
        """Stored window results, newest window first."""
        rows = await asyncio.to_thread(
            store.query_aggregates,
            device=device,
            subscription=subscription,
            since=to_time(since, "since"),
            until=to_time(until, "until"),
            limit=limit,
        )
        return [AggregateOut.of(row) for row in rows]

    @v1.get("/devices", tags=["devices"])
    async def devices() -> list[DeviceOut]:
        """Every device the hub has heard from, by id."""
        return [DeviceOut.of(dev) for dev in await asyncio.to_thread(store.list_devices)]

    app.include_router(v1)
    return app
