"""How the API answers the hub's own errors without telling strangers about its insides.

A caller who has not passed the token check (``/healthz``, a refused request, a failure inside the check
itself) gets a generic message; one who has gets a short reason with URLs and the store's password taken
out. The log always gets the details. Refusals (404, 409, 422) say what was wrong: they are only raised
behind the token check. FastAPI refuses a body that is not JSON before any dependency runs, the token check
included: for a ``/v1`` route that 422 (naming the route's body) goes only to a caller the check then lets
through; anyone else gets the check's 401.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from hub.api.auth import TokenCheck, authorized, bearer, guarded, unauthorized
from hub.db.store import Store
from hub.errors import Conflict, HubError, NotFound, RegistryError, StoreError, Unprocessable

log = logging.getLogger(__name__)

_STATUS: dict[type[HubError], int] = {NotFound: 404, Conflict: 409, Unprocessable: 422}
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
REASON_CHARS = 160


def install_error_handlers(app: FastAPI, store: Store, check: TokenCheck) -> None:
    """The handlers of :class:`HubError` and its kinds on ``app``, scrubbing with ``store``'s URL, and of
    FastAPI's validation errors, answered with 401 to a ``/v1`` caller that does not pass ``check``."""

    def reason(request: Request, exc: Exception) -> str | None:
        """A short reason for an authorized caller; None (say nothing) for anyone else."""
        if not authorized(request):
            return None
        return scrub(str(exc.reason if isinstance(exc, StoreError) else exc), store.url)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if guarded(request) and not authorized(request) and not await check.passes(request, await bearer(request)):
            return await http_exception_handler(request, unauthorized())
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(StoreError)
    async def _store_unavailable(request: Request, exc: StoreError) -> JSONResponse:
        log.warning("%s %s: store %s failed: %s", request.method, request.url.path, exc.operation, exc.reason)
        why = reason(request, exc)
        detail = "the store is unavailable" + (f": {exc.operation} failed: {why}" if why else "")
        return JSONResponse({"detail": detail}, status_code=503)

    @app.exception_handler(RegistryError)
    async def _registry_failed(request: Request, exc: RegistryError) -> JSONResponse:
        log.warning("%s %s: registry: %s", request.method, request.url.path, exc)
        why = reason(request, exc)
        return JSONResponse({"detail": f"registry: {why}" if why else "the image registry failed"}, status_code=502)

    @app.exception_handler(NotFound)
    @app.exception_handler(Conflict)
    @app.exception_handler(Unprocessable)
    async def _refused(_request: Request, exc: HubError) -> JSONResponse:
        status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(HubError)
    async def _hub_failed(request: Request, exc: HubError) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc, exc_info=exc)
        why = reason(request, exc)
        return JSONResponse({"detail": f"the hub failed: {why}" if why else "the hub failed"}, status_code=500)


def scrub(text: str, store_url: str) -> str:
    """``text`` without URLs (a store or registry URL may carry credentials) or the store's password, short."""
    secret = _password(store_url)
    text = text.replace(store_url, "<store url>")
    if secret:
        text = text.replace(secret, "***")
    text = _URL.sub("<url>", text)
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def _password(url: str) -> str | None:
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return None
    return str(password) if password else None
