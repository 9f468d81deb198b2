"""API routes of handlers and subscriptions managed at the hub.

Every change recompiles the desired state of the devices it affects (in the request, so the answer lists the
new versions) and wakes the publisher. Without a signing key the hub cannot send desired state, so changes
are refused (409) rather than stored to no effect; reads work either way.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.

import asyncio
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from edge_protocol.specs import HandlerSpec
from hub.api.schemas.catalog import ChangeOut, HandlerOut, SubscriptionIn, SubscriptionOut, VersionOut
from hub.db.store import Store
from hub.desired.catalog import Catalog, ManagedHandler, ManagedSubscription
from hub.desired.documents import DesiredVersion
from hub.desired.image_registry import DigestResolver, needs_resolution
from hub.desired.publisher import DesiredPublisher
from hub.desired.versions import check_version
from hub.errors import Conflict
from hub.fleet.labels import Selector

_Version = Annotated[str | None, Query(description="the release name of the handler's image (default: initial)")]
NO_KEY = (
    "the hub has no signing key, so it cannot send desired state: set [signing] private_key in its config "
    "(`hub keys init` makes one) and restart it"
)


def catalog_router(
    store: Store, desired: DesiredPublisher | None, clock: Callable[[], float], resolver: DigestResolver
) -> APIRouter:
    router = APIRouter()
    catalog = Catalog(store, clock=clock)

    def publisher() -> DesiredPublisher:
        if desired is None:
            raise Conflict(NO_KEY)
        return desired

    async def recompile(selectors: list[Selector]) -> list[VersionOut]:
        return [_version_out(v) for v in await publisher().targets_changed(selectors)]

    # -- handlers --------------------------------------------------------------------------------------------

    @router.get("/handlers", tags=["handlers"])
    async def list_handlers() -> list[HandlerOut]:
        """Every handler, by name, with the subscriptions that use it."""
        return [_handler_out(h) for h in await asyncio.to_thread(catalog.handlers)]

    @router.get("/handlers/{name}", tags=["handlers"])
    async def get_handler(name: str) -> HandlerOut:
        return _handler_out(await asyncio.to_thread(catalog.handler, name))

    async def put_handler(spec: HandlerSpec, *, replace: bool, version: str | None) -> ChangeOut:
        publisher()
        if version is not None:
            try:
                check_version(version)
            except ValueError as exc:
                raise HTTPException(422, f"version: {exc}") from exc
        if needs_resolution(spec.image):  # a registry tag: devices are told the digest it names now
            spec = spec.model_copy(update={"image": await resolver.resolve(spec.image)})
        handler, previous = await asyncio.to_thread(catalog.put_handler, spec, replace=replace, version=version)
        selectors = []
        if previous is not None and handler.used_by:
            subs = await asyncio.to_thread(catalog.subscriptions)
            selectors = [sub.target for sub in subs if sub.name in handler.used_by]
        action: Literal["created", "replaced"] = "created" if previous is None else "replaced"
        return ChangeOut(action=action, handler=_handler_out(handler), desired=await recompile(selectors))

    @router.post("/handlers", tags=["handlers"], status_code=201)
    async def create_handler(spec: HandlerSpec, version: _Version = None) -> ChangeOut:
        """Declare a handler (409 if the name is taken: PUT replaces). Its image is its first release
        (``initial`` unless ``version`` names it); a registry tag is resolved to its digest (502 if it cannot)."""
        return await put_handler(spec, replace=False, version=version)

    @router.put("/handlers/{name}", tags=["handlers"])
    async def replace_handler(name: str, spec: HandlerSpec, version: _Version = None) -> ChangeOut:
        """Create or replace a handler; the devices running it get a new desired-state version. A new image is
        a new release, made stable at once (409 while a rollout of the handler is in progress)."""
        _same_name(name, spec.name)
        return await put_handler(spec, replace=True, version=version)

    @router.delete("/handlers/{name}", tags=["handlers"])
    async def remove_handler(name: str) -> ChangeOut:
        """Remove a handler; 409 while a subscription uses it."""
        publisher()
        removed = await asyncio.to_thread(catalog.remove_handler, name)
        return ChangeOut(action="removed", handler=_handler_out(removed))

    # -- subscriptions ---------------------------------------------------------------------------------------

    @router.get("/subscriptions", tags=["subscriptions"])
    async def list_subscriptions() -> list[SubscriptionOut]:
        """Every subscription, by name, with its target."""
        return [_subscription_out(s) for s in await asyncio.to_thread(catalog.subscriptions)]

    @router.get("/subscriptions/{name}", tags=["subscriptions"])
    async def get_subscription(name: str) -> SubscriptionOut:
        return _subscription_out(await asyncio.to_thread(catalog.subscription, name))

    async def put_subscription(body: SubscriptionIn, *, replace: bool) -> ChangeOut:
        publisher()
        sub, previous = await asyncio.to_thread(catalog.put_subscription, body.spec, body.selector, replace=replace)
        selectors = [sub.target] if previous is None else [previous.target, sub.target]
        action: Literal["created", "replaced"] = "created" if previous is None else "replaced"
        return ChangeOut(action=action, subscription=_subscription_out(sub), desired=await recompile(selectors))

    @router.post("/subscriptions", tags=["subscriptions"], status_code=201)
    async def create_subscription(body: SubscriptionIn) -> ChangeOut:
        """Add a subscription; its handler must exist (422). The matching devices get a new desired state."""
        return await put_subscription(body, replace=False)

    @router.put("/subscriptions/{name}", tags=["subscriptions"])
    async def replace_subscription(name: str, body: SubscriptionIn) -> ChangeOut:
        """Create or replace a subscription; devices matching its old or new target are recompiled."""
        _same_name(name, body.spec.name)
        return await put_subscription(body, replace=True)

    @router.delete("/subscriptions/{name}", tags=["subscriptions"])
    async def remove_subscription(name: str) -> ChangeOut:
        """Remove a subscription; the devices it targeted stop running it."""
        publisher()
        removed = await asyncio.to_thread(catalog.remove_subscription, name)
        return ChangeOut(
            action="removed", subscription=_subscription_out(removed), desired=await recompile([removed.target])
        )

    return router


def _same_name(path: str, body: str) -> None:
    if path != body:
        raise HTTPException(422, f"name: the body names {body!r}, the path {path!r}")


# Records to JSON shapes: here, beside their routes, so that the schemas (shared with the CLI) import no storage.


def _handler_out(handler: ManagedHandler) -> HandlerOut:
    return HandlerOut(
        name=handler.name, spec=handler.spec, updated_at=handler.updated_at, used_by=list(handler.used_by)
    )


def _subscription_out(sub: ManagedSubscription) -> SubscriptionOut:
    target = [f"{key}={value}" for key, value in sub.target.terms]
    return SubscriptionOut(name=sub.name, target=target, spec=sub.spec, updated_at=sub.updated_at)


def _version_out(made: DesiredVersion) -> VersionOut:
    return VersionOut(device=made.device, version=made.version)
