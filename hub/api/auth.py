"""The API's bearer-token check, one rule for every ``/v1`` route.

A request passes with the config's ``[api] token`` (compared in constant time) or a stored token. Without
one it passes only while the hub has never had a token (:meth:`hub.security.tokens.Tokens.check` answers
None): the API fails closed, so revoking the last stored token leaves it refusing everyone. A request that
passes is marked ``request.state.authorized``, which the error handlers read (:mod:`hub.api.errors`).

The check runs as the ``/v1`` router's dependency, and again from the error handler of a request FastAPI
refused before its dependencies ran (a body that is not JSON): such a request gets the same 401.
"""

# No `from __future__ import annotations`: FastAPI reads the dependency's annotations at runtime.

import asyncio
import hmac
import logging
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hub.db.store import Store
from hub.security.tokens import Tokens

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
"""Every route under this prefix is behind the token check."""
CLOSED_WARNING_EVERY = 60.0
"""Seconds between log warnings that the API refuses requests because no token opens it any more."""

bearer = HTTPBearer(auto_error=False, description="a token from `hub token create` (or the api.token)")


def authorized(request: Request) -> bool:
    """Whether the token check let this request through (False for /healthz, /metrics and refused ones)."""
    return bool(getattr(request.state, "authorized", False))


def guarded(request: Request) -> bool:
    """Whether ``request`` is for a route behind the token check (under :data:`API_PREFIX`)."""
    path = str(request.scope.get("path", "")).removeprefix(str(request.scope.get("root_path", "")))
    return path == API_PREFIX or path.startswith(f"{API_PREFIX}/")


def unauthorized() -> HTTPException:
    """The refusal of a request without a valid token."""
    return HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


class TokenCheck:
    """The rule: ``token`` or a stored token (or the hub never had one). :meth:`passes` applies it to a request;
    :meth:`require` is the router's dependency, raising :func:`unauthorized` when it does not pass."""

    def __init__(self, store: Store, token: str | None) -> None:
        self._expected = token.encode() if token else None
        self._tokens = Tokens(store)
        self._warned_at = -CLOSED_WARNING_EVERY

    async def token_ok(self, presented: str | None) -> bool:
        """The rule alone, for a token presented any way (the console's login and session cookie use it too)."""
        expected = self._expected
        # compare_digest: the time taken must not reveal how much of a guessed token was right.
        if presented and expected is not None and hmac.compare_digest(presented.encode(), expected):
            return True
        # None only while the hub never had a token; once it had one, it stays closed (even with none left).
        stored = await asyncio.to_thread(self._tokens.check, presented or None)
        return bool(stored) or (stored is None and expected is None)

    async def passes(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
        """Whether ``request``, presenting ``credentials`` (``await bearer(request)``), passes; marks it
        authorized when it does."""
        if await self.token_ok(credentials.credentials if credentials is not None else None):
            request.state.authorized = True
            return True
        await self._warn_if_nothing_opens()
        return False

    async def require(
        self, request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> None:
        """The dependency: 401 unless the request passes."""
        if not await self.passes(request, credentials):
            raise unauthorized()

    async def _warn_if_nothing_opens(self) -> None:
        if self._expected is not None or time.monotonic() - self._warned_at < CLOSED_WARNING_EVERY:
            return
        self._warned_at = time.monotonic()
        if await asyncio.to_thread(self._tokens.count) == 0:
            log.warning("API request refused: the last token was revoked, none opens the API (hub token create)")
