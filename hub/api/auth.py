"""The API's bearer-token check, one dependency for every ``/v1`` route.

A request passes with the config's ``[api] token`` (compared in constant time) or a stored token. Without
one it passes only while the hub has never had a token (:meth:`hub.security.tokens.Tokens.check` answers
None): the API fails closed, so revoking the last stored token leaves it refusing everyone. A request that
passes is marked ``request.state.authorized``, which the error handlers read (:mod:`hub.api.errors`).
"""

# No `from __future__ import annotations`: FastAPI reads the dependency's annotations at runtime.

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hub.db.store import Store
from hub.security.tokens import Tokens

log = logging.getLogger(__name__)

CLOSED_WARNING_EVERY = 60.0
"""Seconds between log warnings that the API refuses requests because no token opens it any more."""

bearer = HTTPBearer(auto_error=False, description="a token from `hub token create` (or the api.token)")


def authorized(request: Request) -> bool:
    """Whether the token check let this request through (False for /healthz, /metrics and refused ones)."""
    return bool(getattr(request.state, "authorized", False))


def token_check(store: Store, token: str | None) -> Callable[..., Awaitable[None]]:
    """The dependency: 401 unless the request carries ``token`` or a stored token (or the hub never had one)."""
    expected = token.encode() if token else None
    tokens = Tokens(store)
    warned_at = -CLOSED_WARNING_EVERY

    async def warn_if_nothing_opens() -> None:
        nonlocal warned_at
        if expected is not None or time.monotonic() - warned_at < CLOSED_WARNING_EVERY:
            return
        warned_at = time.monotonic()
        if await asyncio.to_thread(tokens.count) == 0:
            log.warning("API request refused: the last token was revoked, none opens the API (hub token create)")

    async def require_token(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> None:
        presented = credentials.credentials if credentials is not None else None
        # compare_digest: the time taken must not reveal how much of a guessed token was right.
        if presented is not None and expected is not None and hmac.compare_digest(presented.encode(), expected):
            request.state.authorized = True
            return
        # None only while the hub never had a token; once it had one, it stays closed (even with none left).
        stored = await asyncio.to_thread(tokens.check, presented)
        if stored or (stored is None and expected is None):
            request.state.authorized = True
            return
        await warn_if_nothing_opens()
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return require_token
