"""Handlers and subscriptions through the API: CRUD, spec validation with field paths, referential checks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.api.app import create_app
from hub.db.store import Store
from tests.unit.hub.conftest import NOW

HANDLER: dict[str, Any] = {"name": "temp-c", "image": "edgefleet/temp-c:1", "limits": {"memory": "64m", "cpus": 0.5}}
SUB: dict[str, Any] = {
    "target": ["site=lab"],
    "spec": {"name": "temp-lab", "topic": "sensors/+/t", "handler": "temp-c"},
}


async def post(api: httpx.AsyncClient, path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    response = await api.post(path, json=body)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_handler_crud(control_api: httpx.AsyncClient) -> None:
    created = await post(control_api, "/v1/handlers", HANDLER)
    assert created["action"] == "created"
    assert created["desired"] == []  # no subscription uses it yet
    spec = created["handler"]["spec"]
    assert (spec["limits"]["memory"], spec["limits"]["cpus"], spec["replicas"], spec["event_timeout"]) == (
        "64m",
        0.5,
        1,
        "5s",
    )
    taken = await post(control_api, "/v1/handlers", HANDLER, status=409)
    assert "already exists" in taken["detail"]

    replaced = await control_api.put("/v1/handlers/temp-c", json={**HANDLER, "replicas": 2})
    assert (replaced.status_code, replaced.json()["action"]) == (200, "replaced")
    listed = (await control_api.get("/v1/handlers")).json()
    assert [(h["name"], h["spec"]["replicas"], h["used_by"]) for h in listed] == [("temp-c", 2, [])]
    assert (await control_api.get("/v1/handlers/temp-c")).json()["spec"]["image"] == "edgefleet/temp-c:1"
    assert (await control_api.get("/v1/handlers/nope")).status_code == 404
    mismatch = await control_api.put("/v1/handlers/other", json=HANDLER)
    assert (mismatch.status_code, "the body names 'temp-c'" in mismatch.json()["detail"]) == (422, True)

    removed = await control_api.delete("/v1/handlers/temp-c")
    assert (removed.status_code, removed.json()["action"]) == (200, "removed")
    assert (await control_api.get("/v1/handlers")).json() == []
    assert (await control_api.delete("/v1/handlers/temp-c")).status_code == 404


async def test_subscription_crud_and_references(control_api: httpx.AsyncClient) -> None:
    orphan = await post(control_api, "/v1/subscriptions", SUB, status=422)
    assert orphan["detail"].startswith("spec.handler: no handler named 'temp-c'")
    await post(control_api, "/v1/handlers", HANDLER)
    created = await post(control_api, "/v1/subscriptions", SUB)
    sub = created["subscription"]
    assert (sub["name"], sub["target"], sub["spec"]["window"]) == (
        "temp-lab",
        ["site=lab"],
        {"kind": "tumbling", "size": "10s", "hop": None, "gap": None},
    )
    assert [(v["device"], v["version"]) for v in created["desired"]] == [("dev-a", 1), ("dev-b", 1)]
    assert (await post(control_api, "/v1/subscriptions", SUB, status=409))["detail"].startswith("subscription")

    in_use = await control_api.delete("/v1/handlers/temp-c")
    assert in_use.status_code == 409
    assert in_use.json()["detail"] == "handler 'temp-c' is used by subscription(s) temp-lab: remove them first"
    assert (await control_api.get("/v1/handlers/temp-c")).json()["used_by"] == ["temp-lab"]

    listed = (await control_api.get("/v1/subscriptions")).json()
    assert [s["name"] for s in listed] == ["temp-lab"]
    assert (await control_api.get("/v1/subscriptions/temp-lab")).json()["spec"]["topic"] == "sensors/+/t"
    assert (await control_api.get("/v1/subscriptions/nope")).status_code == 404

    removed = await control_api.delete("/v1/subscriptions/temp-lab")
    assert [(v["device"], v["version"]) for v in removed.json()["desired"]] == [("dev-a", 2), ("dev-b", 2)]
    assert (await control_api.delete("/v1/handlers/temp-c")).status_code == 200


@pytest.mark.parametrize(
    ("spec", "target", "path", "message"),
    [
        ({"window": {"kind": "hopping", "size": "10s"}}, [], ["body", "spec", "window"], "0 < hop <= size"),
        ({"window": {"size": "ten"}}, [], ["body", "spec", "window", "size"], "not a duration"),
        ({"stats": ["count", "median"]}, [], ["body", "spec", "stats"], "unknown statistic 'median'"),
        ({"topic": "a/#/b"}, [], ["body", "spec", "topic"], "'#' must be a whole last level"),
        ({"overflow": "spill"}, [], ["body", "spec", "overflow"], "'block' or 'drop-oldest'"),
        ({"colour": "red"}, [], ["body", "spec", "colour"], "Extra inputs are not permitted"),
        ({}, ["site"], ["body", "target"], "write key=value"),
    ],
)
async def test_invalid_subscriptions_are_422_with_the_field_path(
    control_api: httpx.AsyncClient, spec: dict[str, Any], target: list[str], path: list[str], message: str
) -> None:
    await post(control_api, "/v1/handlers", HANDLER)
    body = {"target": target, "spec": {**SUB["spec"], **spec}}
    (error,) = (await post(control_api, "/v1/subscriptions", body, status=422))["detail"]
    assert error["loc"] == path
    assert message in error["msg"]


async def test_invalid_handlers_are_422_with_the_field_path(control_api: httpx.AsyncClient) -> None:
    body = {**HANDLER, "name": "Bad Name", "limits": {"memory": "lots"}, "replicas": 0}
    errors = (await post(control_api, "/v1/handlers", body, status=422))["detail"]
    assert sorted(".".join(map(str, e["loc"][1:])) for e in errors) == ["limits.memory", "name", "replicas"]


async def test_without_a_signing_key_changes_are_409_and_reads_work(fleet_store: Store) -> None:
    app = create_app(fleet_store, clock=lambda: NOW)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as api:
        refused = await api.post("/v1/handlers", json=HANDLER)
        assert refused.status_code == 409
        assert "no signing key" in refused.json()["detail"]
        assert "hub keys init" in refused.json()["detail"]
        assert (await api.get("/v1/handlers")).json() == []
        assert (await api.get("/v1/subscriptions")).json() == []
        assert (await api.get("/v1/devices/dev-a/desired")).status_code == 404
        labels = await api.put("/v1/devices/dev-a/labels", json={"set": {"rack": "r1"}})
        assert labels.status_code == 200  # labels still work: they also select aggregates


async def test_the_token_guards_the_catalog(fleet_store: Store) -> None:
    app = create_app(fleet_store, "tok", clock=lambda: NOW)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as api:
        for method, path in [("GET", "/v1/handlers"), ("POST", "/v1/subscriptions"), ("GET", "/v1/devices/dev-a")]:
            assert (await api.request(method, path)).status_code == 401
