"""The reconciler and expiry: a re-signed document with a later expiry is a renewal (no handler touched), an
expired one is refused and counted by reason, and the document the agent runs keeps running past its expiry
with the desired-expired alarm raised -- loaded from disk at start or not. The clock is injected."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.desired_checks import EXPIRED_ALARM
from edge_agent.pipeline import Pipeline
from edge_agent.reconciler import Reconciler
from edge_agent.state import AgentState
from edge_protocol.desired import DesiredDocument, sign_document

KEY = Ed25519PrivateKey.generate()
IMAGE = "repo@sha256:" + "a" * 64
TOLERANCE = 300.0


class FakePipeline:
    def __init__(self) -> None:
        self.applied: list[list[str]] = []

    on_trial_end: Any = None

    async def apply(self, handlers: list[Any], subscriptions: list[Any], **_how: Any) -> bool:
        """Switches at once: nothing is left on probation."""
        self.applied.append([s.name for s in subscriptions])
        return False

    async def flush_orphans(self, subscriptions: list[Any]) -> None:
        pass


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class World:
    def __init__(self, tmp_path: Path, clock: Clock) -> None:
        self.pipeline = FakePipeline()
        self.alarms: set[str] = set()
        self.changes = 0
        self.clock = clock
        self.path = tmp_path / "desired.json"
        self.rec = self.reconciler()

    def reconciler(self) -> Reconciler:
        def alarm(name: str, on: bool) -> None:
            (self.alarms.add if on else self.alarms.discard)(name)

        def changed() -> None:
            self.changes += 1

        return Reconciler(
            device_id="d",
            public_key=KEY.public_key(),
            store_path=self.path,
            pipeline=cast(Pipeline, self.pipeline),
            on_change=changed,
            clock_tolerance=TOLERANCE,
            alarm=alarm,
            clock=self.clock,
        )


def payload(version: int, expires_at: float | None, subscription: str = "temps") -> bytes:
    doc = DesiredDocument(
        device="d",
        version=version,
        issued_at=0.0,
        expires_at=expires_at,
        handlers=[{"name": "h", "image": IMAGE}],
        subscriptions=[{"name": subscription, "topic": "t/+", "handler": "h"}],
    )
    return sign_document(doc, KEY).model_dump_json().encode()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, Clock(1_000.0))


async def test_a_later_expiry_for_the_same_version_is_a_renewal_without_reapplying(world: World) -> None:
    await world.rec.on_message(payload(3, expires_at=2_000.0))
    assert world.pipeline.applied == [["temps"]]
    renewal = payload(3, expires_at=5_000.0)
    await world.rec.on_message(renewal)
    assert world.pipeline.applied == [["temps"]]  # handlers untouched
    assert world.rec.checks.running is not None
    assert world.rec.checks.running.expires_at == 5_000.0
    assert world.path.read_bytes() == renewal  # a restart runs the renewed document
    assert world.rec.refusals == 0
    # The older signature again (a replay, or the retained message) changes nothing and is no refusal.
    await world.rec.on_message(payload(3, expires_at=2_000.0))
    assert world.rec.checks.running.expires_at == 5_000.0
    assert world.rec.refusals == 0


async def test_a_same_version_with_other_content_is_refused(world: World) -> None:
    await world.rec.on_message(payload(3, expires_at=2_000.0))
    await world.rec.on_message(payload(3, expires_at=5_000.0, subscription="other"))
    assert world.rec.checks.refusals == {"version-reused": 1}
    assert world.pipeline.applied == [["temps"]]


async def test_an_expired_document_is_refused_and_counted_by_reason(world: World) -> None:
    await world.rec.on_message(payload(1, expires_at=2_000.0))
    world.clock.t = 2_000.0 + TOLERANCE + 1
    await world.rec.on_message(payload(2, expires_at=2_000.0, subscription="new"))
    await world.rec.on_message(payload(2, expires_at=2_000.0, subscription="new"))
    await world.rec.on_message(payload(1, expires_at=9_000.0, subscription="x"))  # not a renewal: other content
    assert world.rec.checks.refusals == {"expired": 2, "version-reused": 1}
    assert (world.rec.last_refusal or "").startswith("version-reused")
    assert world.pipeline.applied == [["temps"]]
    assert world.rec.applied_version == 1


async def test_within_the_tolerance_a_document_is_still_applied(world: World) -> None:
    world.clock.t = 2_000.0 + TOLERANCE - 1
    await world.rec.on_message(payload(1, expires_at=2_000.0))
    assert world.rec.applied_version == 1
    assert world.rec.checks.refusals == {}


async def test_the_running_document_expiring_raises_the_alarm_and_keeps_running(world: World) -> None:
    await world.rec.on_message(payload(1, expires_at=2_000.0))
    assert not world.rec.checks.check()
    assert EXPIRED_ALARM not in world.alarms
    world.clock.t = 2_000.0 + TOLERANCE + 1
    assert world.rec.checks.check()
    assert EXPIRED_ALARM in world.alarms
    assert world.pipeline.applied == [["temps"]]  # nothing stopped
    await world.rec.on_message(payload(1, expires_at=world.clock.t + 600))  # the renewal arrives
    assert EXPIRED_ALARM not in world.alarms
    assert world.pipeline.applied == [["temps"]]


async def test_the_watch_raises_the_alarm_and_reports_it(world: World) -> None:
    await world.rec.on_message(payload(1, expires_at=2_000.0))
    world.clock.t = 9_000.0
    reported = asyncio.Event()
    watch = asyncio.create_task(world.rec.checks.watch(reported.set))
    try:
        async with asyncio.timeout(5):
            await reported.wait()
    finally:
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
    assert EXPIRED_ALARM in world.alarms


async def test_an_expired_stored_document_runs_at_start_with_the_alarm(world: World) -> None:
    await world.rec.on_message(payload(4, expires_at=2_000.0))
    world.clock.t = 50_000.0
    restarted = world.reconciler()
    assert await restarted.load_stored()
    assert restarted.applied_version == 4
    assert world.pipeline.applied == [["temps"], ["temps"]]
    assert EXPIRED_ALARM in world.alarms
    # And a newer, valid document from the hub clears it.
    await restarted.on_message(payload(5, expires_at=60_000.0))
    assert EXPIRED_ALARM not in world.alarms


async def test_a_document_without_expiry_is_run_and_never_alarms(world: World) -> None:
    await world.rec.on_message(payload(1, expires_at=None))
    world.clock.t = 1e12
    assert not world.rec.checks.check()
    # A hub that starts signing expiry: the same version with an expiry is taken as a renewal.
    await world.rec.on_message(payload(1, expires_at=2e12))
    assert world.rec.checks.running is not None
    assert world.rec.checks.running.expires_at == 2e12
    assert world.pipeline.applied == [["temps"]]


async def test_the_reported_state_carries_the_refusals_by_reason(world: World) -> None:
    world.clock.t = 9_000.0
    await world.rec.on_message(payload(1, expires_at=2_000.0))
    await world.rec.on_message(b"{}")
    report = await AgentState(reconciler=world.rec).reported("d")
    assert report.desired_refusals == {"expired": 1, "malformed": 1}
