"""What every console page works with: the services the API routes use, the auth, and the answers it shares."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from fastapi import HTTPException, Request
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from hub.console.auth import NOT_LOGGED_IN, ConsoleAuth, Refused, Session
from hub.console.views import render
from hub.db.store import Store
from hub.desired.catalog import Catalog
from hub.desired.publisher import DesiredPublisher
from hub.desired.releases import Releases
from hub.fleet.devices import Devices
from hub.fleet.registry import Fleet
from hub.ingest.aggregates import Aggregates
from hub.rollouts.store import RolloutStore

PREFIX = "/console"
_FLAG = TypeAdapter(bool)
"""How FastAPI reads a ``bool`` query value (pydantic's lax bool), for the gate that runs before it does."""


@dataclass
class Console:
    """The hub's services as the API routes build them, over one store."""

    store: Store
    auth: ConsoleAuth
    desired: DesiredPublisher | None
    clock: Callable[[], float] = time.time
    fleet: Fleet = field(init=False)
    devices: Devices = field(init=False)
    windows: Aggregates = field(init=False)
    catalog: Catalog = field(init=False)
    releases: Releases = field(init=False)
    rollouts: RolloutStore = field(init=False)

    def __post_init__(self) -> None:
        self.fleet = Fleet(self.store)
        self.devices = Devices(self.store)
        self.windows = Aggregates(self.store)
        self.catalog = Catalog(self.store, clock=self.clock)
        self.releases = Releases(self.store, clock=self.clock)
        self.rollouts = RolloutStore(self.store, clock=self.clock)

    async def gate(self, request: Request) -> None:
        """The dependency of every console route but the login's: without a session, a page goes to the login
        form and anything else is refused, before FastAPI validates the route's values (a stranger is not told
        that an id is malformed, or which commands exist)."""
        if await self.auth.session(request) is not None:
            return
        if request.method in ("GET", "HEAD"):
            await self.page_session(request, partial=_flag(request.query_params.get("partial")))
        raise Refused(401, NOT_LOGGED_IN)

    async def page_session(self, request: Request, *, partial: bool = False) -> Session:
        """The session of a page request; without one a page goes to the login form (303), a fragment is 401."""
        session = await self.auth.session(request)
        if session is not None:
            return session
        if partial:
            raise HTTPException(401, NOT_LOGGED_IN)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, "log in first", headers={"Location": f"{PREFIX}/login?next={quote(target)}"})


def _flag(value: str | None) -> bool:
    """``value`` as the route will read it; a missing or malformed flag is false (the page, not its fragment)."""
    try:
        return value is not None and _FLAG.validate_python(value)
    except ValidationError:
        return False


def refused(exc: Refused, session: Session | None = None) -> Response:
    """The answer to a refused action: the reason, with the status that says what kind of refusal it is."""
    return render("refused.html", session=session, status=exc.status, error=exc.reason, title="Refused")
