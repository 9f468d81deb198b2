"""Every route of the hub's app, called without a valid token, is refused: the API fails closed.

The routes are enumerated from ``app.routes`` (so a route added tomorrow is covered without touching this
file); path parameters get dummies and every method is called, with no token, a wrong one, and the hub's last
token after it was revoked. Only the routes in PUBLIC answer without one, each for the reason given there.
A method that may carry a body is called with each of BODIES: whatever is wrong with the body, a caller
without a valid token learns nothing from a 422 (that the route exists, what its body looks like).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Route

from hub.api.app import create_app
from hub.db.store import Store
from hub.desired.publisher import DesiredPublisher
from hub.security.tokens import Tokens
from tests.unit.hub.conftest import NOW

PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "liveness probe: 'ok' or a generic 503, no fleet data",
    ("GET", "/metrics"): "Prometheus scrape: the hub's own counters, no fleet data",
    ("GET", "/openapi.json"): "the API's description: routes and shapes, no data",
    ("GET", "/docs"): "Swagger UI over /openapi.json",
    ("GET", "/docs/oauth2-redirect"): "Swagger UI's helper page",
    ("GET", "/redoc"): "ReDoc over /openapi.json",
    ("GET", "/"): "a redirect to /console/",
    ("GET", "/console"): "a redirect to the console's home (which then asks to log in)",
    ("GET", "/console/"): "a redirect to the console's home (which then asks to log in)",
    ("GET", "/console/login"): "the console's login form",
    ("POST", "/console/login"): "logging in: checks the posted token like the API does",
    ("GET", "/console/static/{name}"): "the console's CSS and script",
}
"""(method, path) -> why it answers without a token. HEAD goes with its GET."""

_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")
DUMMIES = {"command": "pause"}
"""Path parameters that must hold one of a few words to reach the endpoint (others are 1)."""
BODY_METHODS = ("POST", "PUT", "PATCH")
BODIES = {
    "empty": b"{}",
    "malformed": b"{not json",
    "truncated": b'{"name": "x", ',
    "wrong-shape": b"[1, 2]",
    "wrong-type": b'"a string"',
    "unknown-fields": b'{"no_such_field": [null, {"deep": true}]}',
}
"""Bodies sent, as application/json, with every method that may carry one: all but the first are wrong."""


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers flattened."""
    found = []
    for route in _flat(app.routes):
        # A Mount or a websocket route would need its own enumeration here: fail rather than go unchecked.
        path, methods = getattr(route, "path", ""), getattr(route, "methods", None)
        assert path, f"{route!r}: enumerate this kind of route too"
        assert methods, f"{route!r}: enumerate this kind of route too"
        found += [(method, path) for method in sorted(methods)]
    return found


def _json_body_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route that reads a JSON body into a model."""
    found = []
    for route in _flat(app.routes):
        if getattr(route, "body_field", None) is not None:
            found += [(method, getattr(route, "path", "")) for method in sorted(getattr(route, "methods", ()))]
    return found


def _flat(routes: Iterable[object]) -> Iterator[object]:
    for route in routes:
        if isinstance(route, Route):
            yield route
        elif callable(getattr(route, "effective_route_contexts", None)):
            # FastAPI >= 0.16x keeps an included router as one lazy entry; its contexts are the real routes.
            for context in route.effective_route_contexts():  # type: ignore[attr-defined]
                yield getattr(context, "starlette_route", None) or context
        else:
            yield route


def _call(
    client: TestClient, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, str, dict[str, str]]:
    url = _PARAM.sub(lambda m: DUMMIES.get(m.group(1), "1"), path)
    if body is not None:
        headers = {**headers, "Content-Type": "application/json"}
    response = client.request(method, url, headers=headers, content=body, follow_redirects=False)
    return response.status_code, response.headers.get("location", ""), dict(response.headers)


def _refused(status: int, location: str, path: str, headers: dict[str, str]) -> bool:
    if status == 401:
        return path.startswith("/console/") or headers.get("www-authenticate") == "Bearer"
    # A console page sends a browser without a session to the login form instead (and shows nothing).
    return path.startswith("/console/") and status == 303 and location.startswith("/console/login")


@pytest.fixture
def app(fleet_store: Store, publisher: DesiredPublisher) -> FastAPI:
    return create_app(fleet_store, clock=lambda: NOW, desired=publisher)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://hub") as opened:
        yield opened


def test_the_enumeration_sees_the_api_and_the_console(app: FastAPI) -> None:
    routes = _routes(app)
    assert len([r for r in routes if r[1].startswith("/v1/")]) >= 20
    assert len([r for r in routes if r[1].startswith("/console/")]) >= 10
    assert len([r for r in _json_body_routes(app) if r[1].startswith("/v1/")]) >= 6
    stale = set(PUBLIC) - set(routes)
    assert not stale, f"public exceptions naming no route (remove them): {sorted(stale)}"


def _check_every_route(client: TestClient, app: FastAPI, headers: dict[str, str]) -> None:
    wrongly_open = []
    for method, path in _routes(app):
        public = (method, path) in PUBLIC or (method == "HEAD" and ("GET", path) in PUBLIC)
        bodies: dict[str, bytes | None] = dict(BODIES) if method in BODY_METHODS else {"none": None}
        for name, body in bodies.items():
            status, location, answer = _call(client, method, path, headers, body)
            if public:
                assert status < 500, f"{method} {path} ({name} body): {status}"
            elif not _refused(status, location, path, answer):
                wrongly_open.append(f"{method} {path} ({name} body): {status} {location}".strip())
    assert not wrongly_open, "answered without a valid token:\n" + "\n".join(wrongly_open)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer eft_wrong"}], ids=["none", "wrong"])
def test_every_route_needs_a_token_while_one_is_stored(
    client: TestClient, app: FastAPI, fleet_store: Store, headers: dict[str, str]
) -> None:
    Tokens(fleet_store).create("ops")
    _check_every_route(client, app, headers)


@pytest.mark.parametrize("present_it", [False, True], ids=["none", "revoked"])
def test_every_route_stays_closed_after_the_last_token_is_revoked(
    client: TestClient, app: FastAPI, fleet_store: Store, present_it: bool
) -> None:
    token, _ = Tokens(fleet_store).create("only")
    assert client.get("/v1/devices", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert Tokens(fleet_store).revoke("only") is not None
    _check_every_route(client, app, {"Authorization": f"Bearer {token}"} if present_it else {})


def test_every_route_needs_the_configured_token(fleet_store: Store, publisher: DesiredPublisher) -> None:
    app = create_app(fleet_store, "configured-token", clock=lambda: NOW, desired=publisher)
    with TestClient(app, base_url="http://hub") as client:
        _check_every_route(client, app, {})
        _check_every_route(client, app, {"Authorization": "Bearer configured-tokem"})


@pytest.mark.parametrize("body", [b for name, b in BODIES.items() if name != "empty"], ids=list(BODIES)[1:])
def test_a_valid_token_gets_the_validation_errors_of_a_bad_body(
    client: TestClient, app: FastAPI, fleet_store: Store, body: bytes
) -> None:
    """The other side of the walk: the 422 and its detail are only withheld from strangers."""
    token, _ = Tokens(fleet_store).create("ops")
    routes = _json_body_routes(app)
    assert routes
    for method, path in routes:
        url = _PARAM.sub(lambda m: DUMMIES.get(m.group(1), "1"), path)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        response = client.request(method, url, headers=headers, content=body)
        assert response.status_code == 422, f"{method} {path}: {response.status_code} {response.text}"
        assert response.json()["detail"][0]["loc"][0] == "body", f"{method} {path}: {response.text}"


def test_a_hub_that_never_had_a_token_is_open(client: TestClient) -> None:
    """The loopback development hub: the one case without a token (hub serve refuses it beyond loopback)."""
    assert client.get("/v1/devices").status_code == 200
