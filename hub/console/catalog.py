"""The catalog page: handlers with their releases by digest, and subscriptions with the devices they target."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.

import asyncio
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import Response

from hub.console.context import PREFIX, Console
from hub.console.views import render
from hub.desired.catalog import ManagedHandler, ManagedSubscription
from hub.desired.releases import Release


@dataclass(frozen=True, slots=True)
class HandlerEntry:
    handler: ManagedHandler
    releases: list[Release]


@dataclass(frozen=True, slots=True)
class SubscriptionEntry:
    subscription: ManagedSubscription
    devices: list[str]


def routes(console: Console) -> APIRouter:
    router = APIRouter()

    def read() -> tuple[list[HandlerEntry], list[SubscriptionEntry]]:
        handlers = [HandlerEntry(h, console.releases.list(h.name)) for h in console.catalog.handlers()]
        fleet = console.fleet.devices()
        subs = [
            SubscriptionEntry(s, [v.info.id for v in fleet if s.target.matches(v.info.labels)])
            for s in console.catalog.subscriptions()
        ]
        return handlers, subs

    @router.get(f"{PREFIX}/catalog")
    async def catalog_page(request: Request, partial: bool = False) -> Response:
        session = await console.page_session(request, partial=partial)
        handlers, subscriptions = await asyncio.to_thread(read)
        return render("_catalog.html" if partial else "catalog.html", session=session, handlers=handlers,
                      subscriptions=subscriptions, signing=console.desired is not None, title="Catalog")  # fmt: skip

    return router
