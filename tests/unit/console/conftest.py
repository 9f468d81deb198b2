"""A small managed fleet behind the console, driven with FastAPI's TestClient.

dev-a and dev-b (site=lab) are online and run temp-c; dev-c (site=plant) is offline, lost records and refused a
desired state. dev-a and dev-b closed a window a minute for the last 20 minutes (with a sketch, so quantiles
work); the hub signs desired state (a FakeBus instead of a broker), and temp-c has release 1.1 recorded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from edge_protocol.topics import Topics
from hub.api.app import create_app
from hub.db.store import Store
from hub.desired.catalog import Catalog
from hub.desired.documents import DesiredStore
from hub.desired.publisher import DesiredPublisher
from hub.desired.releases import Releases
from hub.fleet.devices import Devices
from hub.fleet.labels import Selector
from hub.fleet.registry import Fleet
from hub.ingest.aggregates import Aggregates
from hub.mqtt.fake import FakeBus
from tests.unit.hub.factories import record, reported

NOW = 100_200.0  # a multiple of 5 minutes: the windows align with 5-minute buckets
TOKEN = "console-test-token"
OLD = "127.0.0.1:5000/temp-c@sha256:" + "a" * 64
NEW = "127.0.0.1:5000/temp-c@sha256:" + "b" * 64
LABELS = {"dev-a": {"site": "lab"}, "dev-b": {"site": "lab"}, "dev-c": {"site": "plant"}}


def _fill(store: Store) -> None:
    devices = Devices(store)
    for device, labels in LABELS.items():
        devices.record_status(device, online=device != "dev-c", agent_version="0.3.0", seen_at=NOW - 5)
        devices.update_labels(device, labels)
    catalog = Catalog(store, clock=lambda: NOW)
    catalog.put_handler(HandlerSpec(name="temp-c", image=OLD), replace=False)
    spec = SubscriptionSpec(name="temp", topic="sensors/#", handler="temp-c", stats=["count", "mean", "p99"])
    catalog.put_subscription(spec, Selector.parse(["site=lab"]), replace=False)
    Releases(store, clock=lambda: NOW).add("temp-c", "1.1", NEW, "127.0.0.1:5000/temp-c:1.1")
    fleet = Fleet(store)
    fleet.record_reported(reported("dev-a", applied=1, ts=NOW - 3), seen_at=NOW - 3, received_at=NOW - 3)
    fleet.record_reported(
        reported("dev-c", healthy=False, losses={"temp": {"outbox-full": 7}}, refusal="signature does not verify",
                 ts=NOW - 300),
        seen_at=NOW - 300, received_at=NOW - 300,
    )  # fmt: skip
    windows = Aggregates(store)
    for offset, device in enumerate(("dev-a", "dev-b")):
        windows.store_batch(device, [
            record(i + 1, device=device, start=NOW - 60.0 * (20 - i), size=60.0, sketch=True,
                   values=(10.0 + i + offset, 20.0 + i, 30.0 + offset), stats=("count", "mean", "p99"))
            for i in range(20)
        ], now=NOW)  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'hub.db'}") as opened:
        _fill(opened)
        yield opened


@pytest.fixture
def publisher(store: Store) -> DesiredPublisher:
    clock = lambda: NOW  # noqa: E731
    return DesiredPublisher(DesiredStore(store, Ed25519PrivateKey.generate(), clock=clock), FakeBus(),
                            Topics("console"), clock=clock)  # fmt: skip


@pytest.fixture
def anonymous(store: Store, publisher: DesiredPublisher) -> Iterator[TestClient]:
    """The hub's app with a configured token and a signing key; nobody logged in."""
    with TestClient(create_app(store, TOKEN, clock=lambda: NOW, desired=publisher)) as client:
        yield client


@pytest.fixture
def client(anonymous: TestClient) -> TestClient:
    """Logged in with the configured token."""
    login(anonymous, TOKEN)
    return anonymous


def hidden(html: str, name: str = "csrf") -> str:
    """The value of the first hidden input ``name`` in a page."""
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match is not None, f"no hidden {name!r} in the page"
    return match.group(1)


def login(client: TestClient, token: str, *, follow: bool = False) -> object:
    form = client.get("/console/login")
    assert form.status_code == 200
    return client.post("/console/login", data={"csrf": hidden(form.text), "token": token, "next": "/console/fleet"},
                       follow_redirects=follow)  # fmt: skip


def csrf_of(client: TestClient, page: str = "/console/rollouts") -> str:
    response = client.get(page)
    assert response.status_code == 200, response.text
    return hidden(response.text)
