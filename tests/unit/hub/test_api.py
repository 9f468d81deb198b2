"""The HTTP API through httpx's ASGI transport: token, filters, shapes, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from hub.api.app import MAX_LIMIT, create_app
from hub.db.store import Store
from hub.ingest.aggregates import Aggregates
from tests.unit.hub.factories import record

NOW = 10_000.0
TOKEN = "s3cret-token"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'hub.db'}") as opened:
        aggregates = Aggregates(opened)
        aggregates.store_batch("dev-a", [record(i, start=NOW - 60.0 * i) for i in range(1, 6)])  # 1..5 minutes ago
        aggregates.store_batch("dev-b", [record(1, device="dev-b", subscription="hum", start=NOW - 90.0)])
        yield opened


def client_for(store: Store, token: str | None = None, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    app = create_app(store, token, clock=lambda: NOW)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub", headers=headers)


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(store) as client:
        yield client


async def starts(api: httpx.AsyncClient, **params: str | int) -> list[float]:
    response = await api.get("/v1/aggregates", params=params)
    assert response.status_code == 200, response.text
    return [row["window_start"] for row in response.json()]


@pytest.mark.parametrize("path", ["/v1/aggregates", "/v1/devices"])
async def test_a_configured_token_is_required(store: Store, path: str) -> None:
    async with client_for(store, TOKEN) as anonymous:
        missing = await anonymous.get(path)
        wrong = await anonymous.get(path, headers={"Authorization": "Bearer not-it"})
        basic = await anonymous.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        right = await anonymous.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert [missing.status_code, wrong.status_code, basic.status_code, right.status_code] == [401, 401, 401, 200]
    assert wrong.headers["WWW-Authenticate"] == "Bearer"


async def test_health_and_metrics_are_open_even_with_a_token(store: Store) -> None:
    async with client_for(store, TOKEN) as anonymous:
        health = await anonymous.get("/healthz")
        metrics = await anonymous.get("/metrics")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert metrics.status_code == 200
    assert "edgefleet_hub_messages_rejected_total" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")


async def test_without_a_token_no_header_is_needed(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/aggregates")).status_code == 200


async def test_filters(api: httpx.AsyncClient) -> None:
    every = [NOW - 60, NOW - 90, NOW - 120, NOW - 180, NOW - 240, NOW - 300]
    assert await starts(api) == every  # newest first
    assert await starts(api, device="dev-b") == [NOW - 90]
    assert await starts(api, subscription="temp", limit=2) == [NOW - 60, NOW - 120]
    assert await starts(api, since="2m") == [NOW - 60, NOW - 90, NOW - 120]  # a duration ago
    assert await starts(api, since=str(NOW - 100), until="1m") == [NOW - 90]  # epoch; until is exclusive
    assert await starts(api, device="dev-a", since="1970-01-01T02:44:10Z") == [NOW - 60, NOW - 120]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"since": "yesterday"}, "since: not a time"),
        ({"until": "2024-01-01T00:00:00"}, "has no time zone"),
        ({"limit": 0}, None),
        ({"limit": MAX_LIMIT + 1}, None),
    ],
)
async def test_bad_parameters_are_422(api: httpx.AsyncClient, params: dict[str, str | int], detail: str | None) -> None:
    response = await api.get("/v1/aggregates", params=params)
    assert response.status_code == 422
    if detail is not None:
        assert detail in response.json()["detail"]


async def test_aggregate_shape(api: httpx.AsyncClient) -> None:
    (row,) = (await api.get("/v1/aggregates", params={"device": "dev-b"})).json()
    assert {k: row[k] for k in ("device", "subscription", "revision", "group", "part", "events")} == {
        "device": "dev-b",
        "subscription": "hum",
        "revision": "rev1",
        "group": "",
        "part": 0,
        "events": 3,
    }
    assert row["window_id"] == f"dev-b/hum@rev1//{NOW - 90:.3f}/0"
    assert row["window_end"] - row["window_start"] == 10.0
    temp = row["fields"]["temp"]
    assert {k: temp[k] for k in ("count", "sum", "min", "max", "mean")} == {
        "count": 3,
        "sum": 6.0,
        "min": 1.0,
        "max": 3.0,
        "mean": 2.0,
    }
    assert temp["stddev"] == pytest.approx((2 / 3) ** 0.5)
    assert temp["state"]["m2"] == pytest.approx(2.0)  # the raw mergeable state, for roll-ups


async def test_devices(api: httpx.AsyncClient) -> None:
    devices = (await api.get("/v1/devices")).json()
    assert [(d["id"], d["online"]) for d in devices] == [("dev-a", True), ("dev-b", True)]


async def test_a_broken_store_is_503(store: Store) -> None:
    async with client_for(store) as api:
        store.close()
        health = await api.get("/healthz")
        query = await api.get("/v1/aggregates")
    assert (health.status_code, query.status_code) == (503, 503)
    assert "store is unavailable" in query.json()["detail"]


async def test_openapi_documents_the_bearer_scheme(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    assert "/v1/aggregates" in schema["paths"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
