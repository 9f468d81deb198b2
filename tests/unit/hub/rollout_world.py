"""A small fleet for rollout tests: five lab devices and one in the plant, all running temp-c on release
``initial`` (OLD), with release 1.1 (NEW) recorded; an injected clock; reports written as ingest would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_protocol.messages import HandlerReport, Reported
from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from hub.db.store import Store
from hub.desired.catalog import Catalog
from hub.desired.documents import DesiredStore, current_record
from hub.desired.publisher import DesiredPublisher
from hub.desired.releases import Releases
from hub.fleet.devices import Devices
from hub.fleet.labels import Selector
from hub.fleet.registry import Fleet
from hub.mqtt.fake import FakeBus
from hub.rollouts.controller import RolloutController
from hub.rollouts.plan import Limits, Progress
from hub.rollouts.store import RolloutRecord
from tests.unit.hub.conftest import TOPICS

OLD = "127.0.0.1:5000/temp-c@sha256:" + "a" * 64
NEW = "127.0.0.1:5000/temp-c@sha256:" + "b" * 64
LAB = ["d1", "d2", "d3", "d4", "d5"]
PLANT = "p1"
SOAK = 30.0
HEALTH = 120.0


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    store: Store
    clock: Clock
    bus: FakeBus
    publisher: DesiredPublisher
    controller: RolloutController

    def report(
        self,
        device: str,
        image: str = NEW,
        *,
        applied: int | None = None,
        healthy: bool = True,
        state: str = "running",
        processed: int = 0,
        errors: int = 0,
        lag: float | None = None,
        failed: str | None = None,
        why: str | None = None,
    ) -> None:
        """The device reports temp-c as given, at its current desired version unless ``applied`` says."""
        self.clock.advance(0.01)
        handler = HandlerReport(
            name="temp-c", image=image, healthy=healthy, state=state,
            processed=processed, errors=errors, lag_ms=lag, update_failed_image=failed, update_error=why,
        )  # fmt: skip
        reported = Reported(
            device=device,
            applied_version=self.version(device) if applied is None else applied,
            handlers=[handler],
            ts=self.clock(),
        )
        Fleet(self.store).record_reported(reported, seen_at=self.clock(), received_at=self.clock())

    def image(self, device: str) -> str:
        record = current_record(self.store, device)
        assert record is not None
        (handler,) = record.document.handlers
        return handler.image

    def version(self, device: str) -> int:
        record = current_record(self.store, device)
        assert record is not None
        return record.version

    def versions(self) -> dict[str, int]:
        return {d: self.version(d) for d in [*LAB, PLANT]}

    def start(self, target: str = "site=lab", **limits: object) -> int:
        chosen = Limits(**{"canary": 1, "batch": "50%", "soak": SOAK, "health_timeout": HEALTH, **limits})  # type: ignore[arg-type]
        return self.controller.rollouts.create("temp-c", "1.1", Selector.parse([target]), chosen).id

    def get(self, rollout_id: int) -> RolloutRecord:
        return self.controller.rollouts.get(rollout_id)

    def progress(self, rollout_id: int, device: str) -> Progress:
        return next(p for p in self.get(rollout_id).devices if p.device == device)

    async def tick(self) -> int:
        return await self.controller.tick()

    async def pass_step(self, devices: list[str], *, processed: int = 100, errors: int = 0, lag: float = 40.0) -> None:
        """Assign (tick), report healthy (tick: soak starts), soak with one report later (tick: passed)."""
        await self.tick()
        for device in devices:
            self.report(device)
        await self.tick()
        self.clock.advance(SOAK + 1)
        for device in devices:
            self.report(device, processed=processed, errors=errors, lag=lag)
        await self.tick()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = Clock()
    with Store(f"sqlite:///{tmp_path / 'hub.db'}") as store:
        for device in [*LAB, PLANT]:
            Devices(store).record_status(device, online=True, agent_version="0.3.0", seen_at=clock())
            Devices(store).update_labels(device, {"site": "plant" if device == PLANT else "lab"})
        catalog = Catalog(store, clock=clock)
        catalog.put_handler(HandlerSpec(name="temp-c", image=OLD), replace=False)
        catalog.put_subscription(
            SubscriptionSpec(name="temp", topic="sensors/#", handler="temp-c"), Selector(), replace=False
        )
        Releases(store, clock=clock).add("temp-c", "1.1", NEW, "127.0.0.1:5000/temp-c:1.1")
        bus = FakeBus()
        publisher = DesiredPublisher(
            DesiredStore(store, Ed25519PrivateKey.generate(), clock=clock), bus, TOPICS, clock=clock
        )
        await publisher.changed(None)
        yield World(store, clock, bus, publisher, RolloutController(store, publisher, clock=clock))
