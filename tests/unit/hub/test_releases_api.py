"""Releases and rollouts through the API (ASGI transport, a fake registry): tags resolved to digests, the
handler's first release, per-device images in desired state, and a rollout's commands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hub.api.app import create_app
from hub.db.store import Store
from hub.desired.documents import current_record
from hub.desired.image_registry import DigestResolver
from hub.desired.publisher import DesiredPublisher
from hub.rollouts.controller import RolloutController
from tests.unit.hub.conftest import NOW

DIGEST_10 = "sha256:" + "1" * 64
DIGEST_11 = "sha256:" + "2" * 64
TAGS = {"temp-c/manifests/1.0": DIGEST_10, "temp-c/manifests/1.1": DIGEST_11}
REG = "127.0.0.1:5000"
SUB = {"target": ["site=lab"], "spec": {"name": "temp-lab", "topic": "sensors/+/t", "handler": "temp-c"}}


def registry(request: httpx.Request) -> httpx.Response:
    if request.url.host == "127.0.0.2":
        raise httpx.ConnectError("connection refused", request=request)
    digest = TAGS.get(request.url.path.removeprefix("/v2/"))
    if digest is None:
        return httpx.Response(404)
    return httpx.Response(200, headers={"Docker-Content-Digest": digest})


@pytest.fixture
async def api(fleet_store: Store, publisher: DesiredPublisher) -> AsyncIterator[httpx.AsyncClient]:
    resolver = DigestResolver(transport=httpx.MockTransport(registry))
    app = create_app(fleet_store, clock=lambda: NOW, desired=publisher, resolver=resolver)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield client


async def call(api: httpx.AsyncClient, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    response = await api.request(method, path, json=body)
    assert response.status_code == status, response.text
    return response.json()


async def test_a_handler_added_by_tag_runs_the_digest_as_its_initial_release(api: httpx.AsyncClient) -> None:
    created = await call(api, "POST", "/v1/handlers", {"name": "temp-c", "image": f"{REG}/temp-c:1.0"}, 201)
    assert created["handler"]["spec"]["image"] == f"{REG}/temp-c@{DIGEST_10}"
    (initial,) = await call(api, "GET", "/v1/handlers/temp-c/releases")
    assert (initial["version"], initial["stable"], initial["image"]) == ("initial", True, f"{REG}/temp-c@{DIGEST_10}")

    await call(api, "POST", "/v1/handlers?version=0.9", {"name": "local", "image": "edgefleet/temp-c:dev"}, 201)
    (local,) = await call(api, "GET", "/v1/handlers/local/releases")
    assert (local["version"], local["image"]) == ("0.9", "edgefleet/temp-c:dev")  # a local tag is kept as is

    missing = await call(api, "POST", "/v1/handlers", {"name": "gone", "image": f"{REG}/temp-c:7"}, 502)
    assert "unknown repository or tag" in missing["detail"]


async def test_release_add_resolves_tags_takes_digests_and_local_ids(api: httpx.AsyncClient) -> None:
    await call(api, "POST", "/v1/handlers", {"name": "temp-c", "image": f"{REG}/temp-c:1.0"}, 201)
    path = "/v1/handlers/temp-c/releases"
    added = await call(api, "POST", path, {"version": "1.1", "image": f"{REG}/temp-c:1.1"}, 201)
    assert (added["image"], added["source"], added["stable"]) == (
        f"{REG}/temp-c@{DIGEST_11}",
        f"{REG}/temp-c:1.1",
        False,
    )
    pinned = await call(api, "POST", path, {"version": "1.2", "image": f"{REG}/temp-c@{DIGEST_11}"}, 201)
    assert pinned["image"] == f"{REG}/temp-c@{DIGEST_11}"
    local = await call(api, "POST", path, {"version": "dev", "local_id": "sha256:" + "f" * 64}, 201)
    assert (local["image"], local["source"]) == ("sha256:" + "f" * 64, "local")
    listed = await call(api, "GET", path)
    assert [(r["version"], r["stable"]) for r in listed] == [
        ("initial", True),
        ("1.1", False),
        ("1.2", False),
        ("dev", False),
    ]

    assert (
        "already has a release '1.1'"
        in (await call(api, "POST", path, {"version": "1.1", "local_id": "sha256:" + "e" * 64}, 409))["detail"]
    )
    assert await call(
        api, "POST", "/v1/handlers/nope/releases", {"version": "1", "local_id": "sha256:" + "e" * 64}, 404
    )
    unknown = await call(api, "POST", path, {"version": "9", "image": f"{REG}/temp-c:9"}, 502)
    assert unknown["detail"] == (
        f"registry: {REG}/temp-c:9: the registry {REG} has no manifest for temp-c:9 (unknown repository or tag)"
    )
    down = await call(api, "POST", path, {"version": "9", "image": "127.0.0.2:5000/temp-c:1.1"}, 502)
    assert "the registry 127.0.0.2:5000 is unreachable" in down["detail"]
    both = await call(api, "POST", path, {"version": "9", "image": "x", "local_id": "sha256:" + "e" * 64}, 422)
    assert "give either image or local_id" in str(both["detail"])
    bad = await call(api, "POST", path, {"version": "9", "local_id": "abc"}, 422)
    assert "64 lowercase hex" in str(bad["detail"])
    assert await call(api, "POST", path, {"version": "a b", "local_id": "sha256:" + "e" * 64}, 422)


async def test_replacing_the_image_makes_a_new_stable_release(api: httpx.AsyncClient) -> None:
    await call(api, "POST", "/v1/handlers", {"name": "temp-c", "image": "img:1"}, 201)
    await call(api, "POST", "/v1/subscriptions", SUB, 201)
    changed = await call(api, "PUT", "/v1/handlers/temp-c", {"name": "temp-c", "image": "img:2"})
    assert [(v["device"], v["version"]) for v in changed["desired"]] == [("dev-a", 2), ("dev-b", 2)]
    listed = await call(api, "GET", "/v1/handlers/temp-c/releases")
    assert [(r["version"], r["image"], r["stable"]) for r in listed] == [
        ("initial", "img:1", False),
        ("r2", "img:2", True),
    ]
    await call(api, "PUT", "/v1/handlers/temp-c?version=one", {"name": "temp-c", "image": "img:1"})
    assert [r["version"] for r in await call(api, "GET", "/v1/handlers/temp-c/releases") if r["stable"]] == ["one"]


async def test_a_rollout_through_the_api(
    api: httpx.AsyncClient, fleet_store: Store, publisher: DesiredPublisher
) -> None:
    await call(api, "POST", "/v1/handlers", {"name": "temp-c", "image": f"{REG}/temp-c:1.0"}, 201)
    await call(api, "POST", "/v1/subscriptions", SUB, 201)
    await call(api, "POST", "/v1/handlers/temp-c/releases", {"version": "1.1", "image": f"{REG}/temp-c:1.1"}, 201)
    body = {"handler": "temp-c", "release": "1.1", "target": ["site=lab"], "canary": 1, "batch": "25%", "soak": "10s"}
    started = await call(api, "POST", "/v1/rollouts", body, 201)
    assert (started["id"], started["state"], started["steps"], started["planned"]) == (
        1,
        "running",
        [["dev-a"], ["dev-b"]],
        2,
    )
    assert (started["soak"], started["health_timeout"], started["max_error_rate"], started["max_lag_ms"]) == (
        "10s",
        "2m",
        0.05,
        1000.0,
    )
    assert (await call(api, "POST", "/v1/rollouts", body, 409))["detail"].startswith("rollout 1 of 'temp-c' is still")
    assert "at least 1" in str((await call(api, "POST", "/v1/rollouts", {**body, "batch": "0"}, 422))["detail"])
    assert "percentage" in str((await call(api, "POST", "/v1/rollouts", {**body, "batch": "lots"}, 422))["detail"])

    await RolloutController(fleet_store, publisher, clock=lambda: NOW).tick()
    record = current_record(fleet_store, "dev-a")
    assert record is not None
    assert record.document.handlers[0].image == f"{REG}/temp-c@{DIGEST_11}"
    status = await call(api, "GET", "/v1/rollouts/1")
    assert [(d["device"], d["step"], d["status"], d["desired_version"]) for d in status["devices"]] == [
        ("dev-a", 1, "assigned", 2),
        ("dev-b", 2, "pending", None),
    ]
    assert (await call(api, "POST", "/v1/rollouts/1/pause"))["state"] == "paused"
    assert (await call(api, "POST", "/v1/rollouts/1/resume"))["state"] == "running"
    undone = await call(api, "POST", "/v1/rollouts/1/undo")
    assert (undone["state"], undone["desired"]) == ("undone", [{"device": "dev-a", "version": 3}])
    assert (await call(api, "POST", "/v1/rollouts/1/abort", status=409))[
        "detail"
    ] == "rollout 1 is undone: it cannot be aborted"
    assert await call(api, "POST", "/v1/rollouts/1/explode", status=422)
    assert [r["id"] for r in await call(api, "GET", "/v1/rollouts?handler=temp-c")] == [1]
    assert (await call(api, "GET", "/v1/rollouts/7", status=404))["detail"] == "no rollout 7"
