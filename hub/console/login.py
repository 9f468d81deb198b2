"""Logging in and out, the console's static files, and the way in (``/`` and ``/console``)."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.

from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from starlette.responses import RedirectResponse, Response

from hub.console.auth import Refused, read_form
from hub.console.context import PREFIX, Console, refused
from hub.console.views import SECURITY_HEADERS, render

_STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
HOME = f"{PREFIX}/fleet"


def routes(console: Console) -> APIRouter:
    router = APIRouter()
    auth = console.auth
    static = {name: (resources.files("hub.console").joinpath("static", name).read_bytes(), kind)
              for name, kind in _STATIC.items()}  # fmt: skip

    @router.get("/")
    async def root() -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=303)

    @router.get(PREFIX)
    @router.get(f"{PREFIX}/")
    async def home() -> Response:
        return RedirectResponse(HOME, status_code=303)

    @router.get(f"{PREFIX}/static/{{name}}")
    async def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, f"no static file {name!r}")
        body, kind = static[name]
        return Response(body, media_type=kind, headers={"Cache-Control": "max-age=300"})

    @router.get(f"{PREFIX}/login")
    async def login_form(request: Request, next: str = HOME) -> Response:
        return _login_again(request, _safe_next(next), 200, None)

    @router.post(f"{PREFIX}/login")
    async def login(request: Request) -> Response:
        try:
            form = await read_form(request)
        except Refused as exc:
            return refused(exc)
        target = _safe_next(form.get("next", HOME))
        if not auth.login_nonce_ok(request, form):
            return _login_again(request, target, 403, "the login form expired or came from another page: try again")
        token = form.get("token", "").strip()
        if not await auth.token_ok(token):
            return _login_again(request, target, 401, "that token is not valid: `hub token create NAME` makes one")
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        auth.set_session(request, response, auth.new_session(token))
        return response

    @router.post(f"{PREFIX}/logout")
    async def logout(request: Request) -> Response:
        try:
            await auth.require_csrf(request)
        except Refused as exc:
            return refused(exc)
        response = _login_again(request, HOME, 200, None, message="logged out")
        auth.clear_session(request, response)
        return response

    def _login_again(request: Request, target: str, status: int, error: str | None, message: str | None = None
                     ) -> Response:  # fmt: skip
        holder = Response()
        nonce = auth.login_nonce(request, holder)
        page = render("login.html", session=None, status=status, next=target, nonce=nonce, error=error,
                      message=message)  # fmt: skip
        page.raw_headers.extend(h for h in holder.raw_headers if h[0] == b"set-cookie")
        return page

    return router


def _safe_next(target: str) -> str:
    """Only a console path: never another site (``//evil``) after logging in."""
    if target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return HOME
