"""The console's login, session cookie and CSRF checks."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from hub.api.app import create_app
from hub.db.store import Store
from hub.desired.publisher import DesiredPublisher
from hub.fleet.labels import Selector
from hub.rollouts.plan import Limits, State
from hub.rollouts.store import RolloutStore
from hub.security.tokens import Tokens
from tests.unit.console.conftest import NOW, TOKEN, csrf_of, hidden, login

PAGES = ["/console/fleet", "/console/devices/dev-a", "/console/catalog", "/console/rollouts", "/console/aggregates",
         "/console/aggregates.csv"]  # fmt: skip


def _rollout(store: Store) -> int:
    return RolloutStore(store, clock=lambda: NOW).create("temp-c", "1.1", Selector(), Limits(batch="50%")).id


@pytest.mark.parametrize("path", PAGES)
def test_pages_send_a_stranger_to_the_login_form(anonymous: TestClient, path: str) -> None:
    response = anonymous.get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/console/login?next={quote(path)}"
    assert "dev-a" not in response.text


@pytest.mark.parametrize("path", [p for p in PAGES if not p.endswith(".csv")])
def test_fragments_answer_401_without_a_session(anonymous: TestClient, path: str) -> None:
    response = anonymous.get(path, params={"partial": "1"})
    assert response.status_code == 401
    assert "log in again" in response.json()["detail"]


def test_the_login_form_and_static_files_need_no_session(anonymous: TestClient) -> None:
    assert anonymous.get("/console/login").status_code == 200
    for name, kind in [("console.css", "text/css"), ("console.js", "text/javascript")]:
        response = anonymous.get(f"/console/static/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(kind)
    assert anonymous.get("/console/static/../auth.py").status_code == 404
    assert anonymous.get("/console/static/nothing.js").status_code == 404


def test_a_wrong_token_is_refused_with_a_reason(anonymous: TestClient) -> None:
    response = login(anonymous, "not-the-token")
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert "that token is not valid" in response.text  # type: ignore[attr-defined]
    assert "edgefleet_console" not in anonymous.cookies or not anonymous.cookies.get("edgefleet_console")
    assert anonymous.get("/console/fleet", follow_redirects=False).status_code == 303


def test_the_session_cookie_is_httponly_and_strict(anonymous: TestClient) -> None:
    response = login(anonymous, TOKEN)
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert response.headers["location"] == "/console/fleet"  # type: ignore[attr-defined]
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("edgefleet_console="))  # type: ignore[attr-defined]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
    assert TOKEN not in cookie  # encoded, at least not greppable
    page = anonymous.get("/console/fleet")
    assert page.status_code == 200
    assert "dev-a" in page.text


def test_over_tls_the_cookie_is_secure(store: Store, publisher: DesiredPublisher) -> None:
    app = create_app(store, TOKEN, clock=lambda: NOW, desired=publisher)
    with TestClient(app, base_url="https://hub.example") as client:
        response = login(client, TOKEN)
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("edgefleet_console="))  # type: ignore[attr-defined]
        assert "secure" in {part.strip().lower() for part in cookie.split(";")}


def test_a_stored_token_logs_in_and_revoking_it_ends_the_session(store: Store, anonymous: TestClient) -> None:
    token, _ = Tokens(store).create("operator")
    assert login(anonymous, token).status_code == 303  # type: ignore[attr-defined]
    assert anonymous.get("/console/catalog").status_code == 200
    Tokens(store).revoke("operator")
    assert anonymous.get("/console/catalog", follow_redirects=False).status_code == 303


def test_without_any_token_the_console_is_as_open_as_the_api(store: Store) -> None:
    with TestClient(create_app(store, None, clock=lambda: NOW)) as client:
        assert login(client, "").status_code == 303  # type: ignore[attr-defined]
        assert client.get("/console/fleet").status_code == 200


def test_the_login_form_is_protected_by_its_own_nonce(anonymous: TestClient) -> None:
    anonymous.get("/console/login")
    response = anonymous.post("/console/login", data={"csrf": "forged", "token": TOKEN}, follow_redirects=False)
    assert response.status_code == 403
    assert "login form expired" in response.text
    anonymous.cookies.clear()
    response = anonymous.post("/console/login", data={"csrf": "", "token": TOKEN}, follow_redirects=False)
    assert response.status_code == 403


def test_login_redirects_only_within_the_console(anonymous: TestClient) -> None:
    form = anonymous.get("/console/login", params={"next": "//evil.example/x"})
    assert 'name="next" value="/console/fleet"' in form.text
    data = {"csrf": hidden(form.text), "token": TOKEN, "next": "https://evil.example/"}
    response = anonymous.post("/console/login", data=data, follow_redirects=False)
    assert response.headers["location"] == "/console/fleet"
    form = anonymous.get("/console/login", params={"next": "/console/rollouts"})
    data = {"csrf": hidden(form.text), "token": TOKEN, "next": hidden(form.text, "next")}
    response = anonymous.post("/console/login", data=data, follow_redirects=False)
    assert response.headers["location"] == "/console/rollouts"


def test_an_action_without_a_session_is_refused(store: Store, anonymous: TestClient) -> None:
    rollout = _rollout(store)
    response = anonymous.post(f"/console/rollouts/{rollout}/pause", data={"csrf": "anything"})
    assert response.status_code == 401
    assert "not logged in" in response.text
    assert RolloutStore(store).get(rollout).state is State.RUNNING


MALFORMED = [("get", "/console/rollouts/not-a-number"), ("get", "/console/fleet?partial=perhaps"),
             ("post", "/console/rollouts/not-a-number/pause"), ("post", "/console/rollouts/1/explode")]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), MALFORMED)
def test_a_stranger_with_a_malformed_request_is_sent_to_log_in_not_told_what_is_wrong(
    anonymous: TestClient, method: str, path: str
) -> None:
    response = anonymous.request(method, path, data={"csrf": "anything"}, follow_redirects=False)
    if method == "get":
        assert response.status_code == 303
        assert response.headers["location"] == f"/console/login?next={quote(path)}"
    else:
        assert response.status_code == 401
        assert "not logged in" in response.text
    assert "int_parsing" not in response.text
    assert "enum" not in response.text
    # Behind the session the same request is told what is wrong with it.
    assert login(anonymous, TOKEN).status_code == 303  # type: ignore[attr-defined]
    assert anonymous.request(method, path, data={"csrf": csrf_of(anonymous)}).status_code == 422


@pytest.mark.parametrize("csrf", [None, "", "0" * 64, "stolen-from-another-page"])
def test_an_action_with_a_bad_csrf_token_is_refused(store: Store, client: TestClient, csrf: str | None) -> None:
    rollout = _rollout(store)
    data = {} if csrf is None else {"csrf": csrf}
    response = client.post(f"/console/rollouts/{rollout}/pause", data=data)
    assert response.status_code == 403
    assert "CSRF token does not match" in response.text
    assert RolloutStore(store).get(rollout).state is State.RUNNING


def test_the_csrf_token_is_per_session(store: Store, publisher: DesiredPublisher, client: TestClient) -> None:
    rollout = _rollout(store)
    old = csrf_of(client)
    assert login(client, TOKEN).status_code == 303  # type: ignore[attr-defined]  # a new session, same token
    new = csrf_of(client)
    assert old != new
    assert client.post(f"/console/rollouts/{rollout}/pause", data={"csrf": old}).status_code == 403
    response = client.post(f"/console/rollouts/{rollout}/pause", headers={"X-CSRF-Token": new})
    assert response.status_code == 200, response.text
    assert RolloutStore(store).get(rollout).state is State.PAUSED


def test_logout_needs_the_csrf_token_and_ends_the_session(client: TestClient) -> None:
    assert client.post("/console/logout", data={"csrf": "nope"}).status_code == 403
    assert client.get("/console/fleet").status_code == 200
    response = client.post("/console/logout", data={"csrf": csrf_of(client, "/console/fleet")})
    assert response.status_code == 200
    assert "logged out" in response.text
    assert client.get("/console/fleet", follow_redirects=False).status_code == 303


def test_pages_carry_a_strict_content_security_policy(client: TestClient) -> None:
    response = client.get("/console/fleet")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"
