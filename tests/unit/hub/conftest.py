"""Fixtures of the hub's control-plane tests: a temp store with a small labelled fleet, a signing key, the
desired-state publisher on a fake bus, and the API over them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_protocol.topics import Topics
from hub.api.app import create_app
from hub.db.store import Store
from hub.desired.documents import DesiredStore
from hub.desired.publisher import DesiredPublisher
from hub.fleet.devices import Devices
from hub.mqtt.fake import FakeBus

FLEET = {"dev-a": {"site": "lab"}, "dev-b": {"site": "lab", "tier": "edge"}, "dev-c": {"site": "plant"}}
TOPICS = Topics("unit")
NOW = 5_000.0


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hub.db'}"


@pytest.fixture
def fleet_store(db_url: str) -> Iterator[Store]:
    """A store that knows dev-a (site=lab), dev-b (site=lab, tier=edge) and dev-c (site=plant)."""
    with Store(db_url) as store:
        for device, labels in FLEET.items():
            Devices(store).record_status(device, online=True, agent_version="0.2.0", seen_at=NOW)
            Devices(store).update_labels(device, labels)
        yield store


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


@pytest.fixture
def publisher(fleet_store: Store, signing_key: Ed25519PrivateKey, bus: FakeBus) -> DesiredPublisher:
    return DesiredPublisher(DesiredStore(fleet_store, signing_key, clock=lambda: NOW), bus, TOPICS, clock=lambda: NOW)


@pytest.fixture
async def control_api(fleet_store: Store, publisher: DesiredPublisher) -> AsyncIterator[httpx.AsyncClient]:
    """The API with desired-state publishing on (its publishing loop is not running: tests drive it)."""
    app = create_app(fleet_store, clock=lambda: NOW, desired=publisher)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield client
