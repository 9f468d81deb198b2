"""The console's session: an API token exchanged for a cookie, and a CSRF token bound to that session.

Logging in checks the token exactly as the API checks a bearer token (the config's ``[api] token``, compared in
constant time, then the stored tokens; with neither the API is open, and so is the console's login). The
cookie holds a random session nonce and the token itself; it is HttpOnly (page scripts never see it),
SameSite=Strict (no other site's page sends it) and Secure when the console is served over TLS. The token is
checked again on every request, so ``hub token revoke`` ends its console sessions at once; nothing about the
session is kept in the hub, so any replica serves it and a restart logs nobody out.

CSRF: every state-changing request must carry the session's CSRF token (form field ``csrf`` or header
``X-CSRF-Token``): an HMAC of the session nonce keyed with the token's digest, so it changes with each login
and a page of another site cannot know it. The login form itself is protected by a double-submit value: a
random cookie set with the form, which the posted form must repeat.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from hub.api.auth import TokenCheck
from hub.db.store import Store

SESSION_COOKIE = "edgefleet_console"
LOGIN_COOKIE = "edgefleet_console_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_MAX_AGE = 12 * 3600
"""Seconds a console session lasts before the browser drops its cookie and asks for the token again."""
COOKIE_PATH = "/console"
MAX_FORM_BYTES = 64 * 1024
NOT_LOGGED_IN = "not logged in, or the session's token was revoked: log in again"


class Refused(Exception):
    """A console request refused before it did anything: ``status`` and the reason shown to the operator."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser: the nonce of this login and the token it presented."""

    nonce: str
    token: str

    @property
    def csrf(self) -> str:
        key = hashlib.sha256(b"edgefleet-console-csrf\0" + self.token.encode()).digest()
        return hmac.new(key, self.nonce.encode(), hashlib.sha256).hexdigest()

    def cookie_value(self) -> str:
        encoded = base64.urlsafe_b64encode(self.token.encode()).decode().rstrip("=")
        return f"{self.nonce}.{encoded}"

    @classmethod
    def parse(cls, value: str | None) -> Session | None:
        if not value:
            return None
        nonce, sep, encoded = value.partition(".")
        if not sep or not nonce:
            return None
        try:
            token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return cls(nonce, token)


class ConsoleAuth:
    """Checks tokens like the API does, and reads, sets and clears the console's cookies."""

    def __init__(self, store: Store, token: str | None) -> None:
        self._check = TokenCheck(store, token)

    async def token_ok(self, presented: str) -> bool:
        """The API's rule (:meth:`hub.api.auth.TokenCheck.token_ok`): the same tokens open both."""
        return await self._check.token_ok(presented)

    async def session(self, request: Request) -> Session | None:
        """The request's session when its cookie holds a token that is (still) valid."""
        if hasattr(request.state, "console_session"):  # checked already by the routes' gate
            return request.state.console_session  # type: ignore[no-any-return]
        session = Session.parse(request.cookies.get(SESSION_COOKIE))
        if session is not None and not await self.token_ok(session.token):
            session = None
        request.state.console_session = session
        if session is not None:
            request.state.authorized = True  # as the API's token check marks it: errors may then say more
        return session

    async def require(self, request: Request) -> Session:
        session = await self.session(request)
        if session is None:
            raise Refused(401, NOT_LOGGED_IN)
        return session

    async def require_csrf(self, request: Request) -> tuple[Session, dict[str, str]]:
        """The session and the posted form, once the form (or header) carries the session's CSRF token."""
        session = await self.require(request)
        form = await read_form(request)
        presented = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD, "")
        if not hmac.compare_digest(presented.encode(), session.csrf.encode()):
            raise Refused(403, "the form's CSRF token does not match this session: reload the page and try again")
        return session, form

    # -- cookies ---------------------------------------------------------------------------------------------

    @staticmethod
    def new_session(token: str) -> Session:
        return Session(secrets.token_urlsafe(16), token)

    @staticmethod
    def set_session(request: Request, response: Response, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE, session.cookie_value(), max_age=SESSION_MAX_AGE, path=COOKIE_PATH,
            httponly=True, samesite="strict", secure=_tls(request),
        )  # fmt: skip
        response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)

    @staticmethod
    def clear_session(request: Request, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_tls(request))

    @staticmethod
    def login_nonce(request: Request, response: Response) -> str:
        """The login form's double-submit value, set as a cookie too (kept when the browser has one)."""
        nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
        response.set_cookie(
            LOGIN_COOKIE, nonce, max_age=3600, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_tls(request)
        )
        return nonce

    @staticmethod
    def login_nonce_ok(request: Request, form: dict[str, str]) -> bool:
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), form.get(CSRF_FIELD, "").encode())


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (last value wins); {} for any other body."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Refused(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, f"the form does not parse: {exc}") from exc
    return {key: values[-1] for key, values in parsed.items()}


def _tls(request: Request) -> bool:
    return request.url.scheme == "https"
