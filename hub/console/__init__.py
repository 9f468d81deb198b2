"""The web console, served by ``hub serve`` beside the API (``/console``): server-rendered pages over the same
services and the same tokens as the API. See :mod:`hub.console.auth` for the session and CSRF rules."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter

from hub.console import aggregates, catalog, fleet, login, rollouts
from hub.console.auth import ConsoleAuth
from hub.console.context import Console
from hub.db.store import Store
from hub.desired.publisher import DesiredPublisher


def console_router(
    store: Store,
    token: str | None = None,
    *,
    desired: DesiredPublisher | None = None,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """Every console route; ``token`` and the store's tokens log in, as they authorise the API."""
    console = Console(store, ConsoleAuth(store, token), desired, clock)
    router = APIRouter(include_in_schema=False)
    for module in (login, fleet, catalog, rollouts, aggregates):
        router.include_router(module.routes(console))
    return router
