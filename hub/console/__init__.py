"""The web console, served by ``hub serve`` beside the API (``/console``): server-rendered pages over the same
services and the same tokens as the API. See :mod:`hub.console.auth` for the session and CSRF rules."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.responses import Response

from hub.console import aggregates, catalog, fleet, login, rollouts
from hub.console.auth import ConsoleAuth, Refused
from hub.console.context import Console, refused
from hub.db.store import Store
from hub.desired.publisher import DesiredPublisher


def install_console(
    app: FastAPI,
    store: Store,
    token: str | None = None,
    *,
    desired: DesiredPublisher | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Every console route on ``app``; ``token`` and the store's tokens log in, as they authorise the API."""
    console = Console(store, ConsoleAuth(store, token), desired, clock)
    router = APIRouter(include_in_schema=False)
    router.include_router(login.routes(console))
    for module in (fleet, catalog, rollouts, aggregates):
        router.include_router(module.routes(console), dependencies=[Depends(console.gate)])
    app.include_router(router)

    @app.exception_handler(Refused)
    async def _refused(_request: Request, exc: Refused) -> Response:
        return refused(exc)
