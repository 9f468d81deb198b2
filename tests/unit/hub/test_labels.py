"""Device labels: the selector module, the store, the API's label filters and PUT."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from hub.api.app import create_app
from hub.db.store import Store
from hub.fleet.devices import Devices
from hub.fleet.labels import LabelError, Selector, parse_assignments
from hub.ingest.aggregates import Aggregates
from tests.unit.hub.factories import record

FLEET = {"dev-a": {"site": "lyon", "tier": "edge"}, "dev-b": {"site": "lyon"}, "dev-c": {"site": "oslo"}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'hub.db'}") as opened:
        for device, labels in FLEET.items():
            Aggregates(opened).store_batch(device, [record(1, device=device, start=1000.0)])
            Devices(opened).update_labels(device, labels)
        yield opened


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, clock=lambda: 5000.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield client


def test_selector_parsing_and_matching() -> None:
    selector = Selector.parse(["tier=edge", "site=lyon"])
    assert str(selector) == "site=lyon,tier=edge"
    assert selector.matches({"site": "lyon", "tier": "edge", "x": "1"})
    assert not selector.matches({"site": "lyon"})
    assert not Selector.parse([])
    assert Selector.parse(None).matches(None)
    assert Selector.parse(["note="]).matches({"note": ""})  # an empty value is a value


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        (["site"], "bad label term 'site': write key=value"),
        (["=lyon"], "bad label key ''"),
        (["-site=x"], "starting and ending with a letter or digit"),
        (["site=a", "site=b"], "given twice with different values"),
        (["site=\x00"], "control characters"),
    ],
)
def test_selector_errors_say_what_is_wrong(terms: list[str], message: str) -> None:
    with pytest.raises(LabelError, match=message):
        parse_assignments(terms)


def test_store_sets_and_removes_labels(store: Store) -> None:
    assert Devices(store).update_labels("dev-a", {"rack": "r1"}, ["tier", "absent"]) == {"site": "lyon", "rack": "r1"}
    assert Devices(store).update_labels("nope", {"a": "b"}) is None
    assert [d.id for d in Devices(store).all(Selector.parse(["site=lyon"]))] == ["dev-a", "dev-b"]
    assert Devices(store).all()[0].labels == {"site": "lyon", "rack": "r1"}


def test_a_database_from_before_labels_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE devices (id TEXT PRIMARY KEY, first_seen FLOAT, last_seen FLOAT, online BOOLEAN,"
            " agent_version TEXT)"
        )
        conn.execute("INSERT INTO devices VALUES ('old', 1.0, 2.0, 1, '0.1')")
    with Store(f"sqlite:///{path}") as store:
        assert Devices(store).all()[0].labels == {}
        assert Devices(store).update_labels("old", {"site": "lyon"}) == {"site": "lyon"}


async def test_devices_filter_by_every_label_term(api: httpx.AsyncClient) -> None:
    async def ids(*terms: str) -> list[str]:
        response = await api.get("/v1/devices", params={"label": list(terms)})
        assert response.status_code == 200, response.text
        return [d["id"] for d in response.json()]

    assert await ids() == ["dev-a", "dev-b", "dev-c"]
    assert await ids("site=lyon") == ["dev-a", "dev-b"]
    assert await ids("site=lyon", "tier=edge") == ["dev-a"]
    assert await ids("site=paris") == []
    devices = (await api.get("/v1/devices")).json()
    assert devices[0]["labels"] == {"site": "lyon", "tier": "edge"}


async def test_aggregates_filter_by_label(api: httpx.AsyncClient) -> None:
    async def devices(**params: str | list[str]) -> list[str]:
        response = await api.get("/v1/aggregates", params=params)
        assert response.status_code == 200, response.text
        return sorted(row["device"] for row in response.json())

    assert await devices(label="site=lyon") == ["dev-a", "dev-b"]
    assert await devices(label=["site=lyon", "tier=edge"]) == ["dev-a"]
    assert await devices(label="site=oslo", device="dev-a") == []
    assert await devices(label="site=paris") == []
    bad = await api.get("/v1/aggregates", params={"label": "site"})
    assert bad.status_code == 422
    assert bad.json()["detail"] == "label: bad label term 'site': write key=value, e.g. site=lyon"


async def test_put_labels(api: httpx.AsyncClient) -> None:
    response = await api.put("/v1/devices/dev-c/labels", json={"set": {"tier": "core"}, "remove": ["site"]})
    assert (response.status_code, response.json()) == (200, {"tier": "core"})
    unknown = await api.put("/v1/devices/ghost/labels", json={"set": {"a": "b"}})
    assert unknown.status_code == 404
    assert "unknown device 'ghost'" in unknown.json()["detail"]
    bad_key = await api.put("/v1/devices/dev-c/labels", json={"set": {"bad key": "x"}})
    assert (bad_key.status_code, "bad label key 'bad key'" in bad_key.json()["detail"]) == (422, True)
    extra = await api.put("/v1/devices/dev-c/labels", json={"add": {"a": "b"}})
    assert extra.status_code == 422
