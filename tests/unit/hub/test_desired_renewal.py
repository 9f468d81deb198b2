"""The hub's re-signing job: with an injected clock, the documents with less than half their validity left
(or none at all) are re-signed -- same version and content, later expiry, marked unpublished -- and the others
are left alone; a renewal raced by another writer is not made twice; a publisher that sent an envelope the
renewal replaced puts the stored one back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_protocol.desired import verify_document
from hub.db.store import Store
from hub.desired.documents import DesiredStore
from hub.desired.publisher import MAX_CHASES, DesiredPublisher
from hub.desired.renewal import Renewal
from hub.mqtt.fake import FakeBus
from tests.unit.hub.conftest import TOPICS

VALIDITY = 1_000.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock(10_000.0)


@pytest.fixture
def desired(fleet_store: Store, signing_key: Ed25519PrivateKey, clock: Clock) -> DesiredStore:
    return DesiredStore(fleet_store, signing_key, clock=clock, validity=VALIDITY)


def expiry(desired: DesiredStore, device: str) -> float | None:
    record = desired.current(device)
    assert record is not None
    return record.document.expires_at


def test_documents_close_to_expiry_are_renewed_and_the_others_are_not(
    desired: DesiredStore, clock: Clock, signing_key: Ed25519PrivateKey
) -> None:
    desired.recompile(["dev-a", "dev-b"])
    assert expiry(desired, "dev-a") == 10_000.0 + VALIDITY
    clock.t = 10_400.0
    desired.recompile(["dev-c"])  # signed later: more than half its validity left when the job looks
    for device in ("dev-a", "dev-b", "dev-c"):
        desired.mark_published(device, 1, clock.t)
    renewal = Renewal(desired)
    clock.t = 10_600.0  # dev-a and dev-b have 400 s of 1000 left, dev-c 800
    renewed = renewal.renew_due()
    assert sorted((r.device, r.version) for r in renewed) == [("dev-a", 1), ("dev-b", 1)]
    assert expiry(desired, "dev-a") == 10_600.0 + VALIDITY
    assert expiry(desired, "dev-c") == 10_400.0 + VALIDITY
    record = desired.current("dev-a")
    assert record is not None
    assert (record.version, record.published_at) == (1, None)  # same version, to be published again
    document = verify_document(record.envelope.encode(), signing_key.public_key(), "dev-a", now=clock.t)
    assert document.issued_at == 10_600.0
    assert desired.unpublished() == ["dev-a", "dev-b"]
    assert renewal.renew_due() == []  # nothing is due any more


def test_a_document_signed_without_expiry_is_renewed_with_one(
    fleet_store: Store, signing_key: Ed25519PrivateKey, desired: DesiredStore, clock: Clock
) -> None:
    DesiredStore(fleet_store, signing_key, clock=clock).recompile(["dev-a"])  # a hub without validity
    assert expiry(desired, "dev-a") is None
    assert [r.device for r in Renewal(desired).renew_due()] == ["dev-a"]
    assert expiry(desired, "dev-a") == clock.t + VALIDITY


def test_a_renewal_raced_by_another_replica_is_made_once(desired: DesiredStore, clock: Clock) -> None:
    desired.recompile(["dev-a"])
    clock.t += VALIDITY * 0.9
    mine, theirs = Renewal(desired), Renewal(desired)
    due = mine.due()
    assert [d for d, _v, _e in due] == ["dev-a"]
    assert [r.device for r in theirs.renew_due()] == ["dev-a"]
    clock.t += 1
    assert [r for d, v, e in due if (r := mine._renew(d, v, e)) is not None] == []


async def test_a_renewal_made_while_publishing_is_not_taken_for_published(desired: DesiredStore, clock: Clock) -> None:
    desired.recompile(["dev-a"])
    old = desired.current("dev-a")
    assert old is not None
    clock.t += VALIDITY * 0.9
    Renewal(desired).renew_due()
    # The publisher published the old envelope; its mark must not cover the renewal made meanwhile.
    desired.mark_published("dev-a", 1, clock.t, old.envelope)
    assert desired.unpublished() == ["dev-a"]
    bus = FakeBus()
    publisher = DesiredPublisher(desired, bus, TOPICS, clock=clock)
    assert await publisher.publish_pending() == 1
    assert expiry(desired, "dev-a") == clock.t + VALIDITY
    assert desired.unpublished() == []


PublishFn = Callable[..., Awaitable[None]]


def hold_first_publish(bus: FakeBus, meanwhile: Callable[[], Awaitable[None]], *, every: bool = False) -> None:
    """Run ``meanwhile`` before the first publish (each publish, with ``every``) reaches ``bus``: a slow
    replica whose publish lands after whatever ``meanwhile`` does. Publishes made by ``meanwhile`` go through."""
    real_publish: PublishFn = bus.publish
    state = {"held": 0, "inside": False}

    async def publish(topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if not state["inside"] and (every or not state["held"]):
            state["held"] += 1
            state["inside"] = True
            try:
                await meanwhile()
            finally:
                state["inside"] = False
        await real_publish(topic, payload, qos=qos, retain=retain)

    bus.publish = publish  # type: ignore[method-assign]


def retained(bus: FakeBus, device: str) -> str:
    return [p for p in bus.published if p.topic == TOPICS.desired(device) and p.retain][-1].payload.decode()


async def test_an_envelope_published_over_its_renewal_is_replaced_by_the_stored_one(
    desired: DesiredStore, clock: Clock
) -> None:
    """Replica A reads v1 signed as E1 and is slow to publish it; the renewal re-signs v1 as E2; replica B
    publishes E2 and marks it published; then A's E1 reaches the broker. The version is still 1, but the
    stored envelope is not E1: A publishes E2 again, so the broker does not retain E1 (which expires first)
    while the store says E2 is published."""
    desired.recompile(["dev-a"])
    old = desired.current("dev-a")
    assert old is not None
    bus = FakeBus()
    a = DesiredPublisher(desired, bus, TOPICS, clock=clock)
    b = DesiredPublisher(desired, bus, TOPICS, clock=clock)

    async def renew_and_b_publishes() -> None:
        clock.t += VALIDITY * 0.6
        assert [r.device for r in Renewal(desired).renew_due()] == ["dev-a"]
        assert await b.push("dev-a") == 1
        assert desired.unpublished() == []  # B's mark: E2 is published

    hold_first_publish(bus, renew_and_b_publishes)
    assert await a.push("dev-a") == 1
    stored = desired.current("dev-a")
    assert stored is not None
    assert stored.envelope != old.envelope
    assert stored.published_at is not None
    # B's E2, A's late E1, A's E2 again: the last retained publish is the stored envelope.
    assert [p.payload.decode() for p in bus.published] == [stored.envelope, old.envelope, stored.envelope]
    assert retained(bus, "dev-a") == stored.envelope


async def test_a_push_that_stops_chasing_leaves_the_stored_envelope_to_the_next_sweep(
    desired: DesiredStore, clock: Clock
) -> None:
    """A renewal and replica B's publish before each of A's publishes: A stops after ``MAX_CHASES`` with its
    last (stale) envelope retained over B's; the stored one must not stay marked published, so the next sweep
    publishes it."""
    desired.recompile(["dev-a"])
    bus = FakeBus()
    a = DesiredPublisher(desired, bus, TOPICS, clock=clock)
    b = DesiredPublisher(desired, bus, TOPICS, clock=clock)

    async def renew_and_b_publishes() -> None:
        clock.t += VALIDITY * 0.6
        assert [r.device for r in Renewal(desired).renew_due()] == ["dev-a"]
        await b.push("dev-a")

    hold_first_publish(bus, renew_and_b_publishes, every=True)
    assert await a.push("dev-a") == 1
    stored = desired.current("dev-a")
    assert stored is not None
    assert len(bus.published) == 2 * MAX_CHASES  # A's publishes, each after one of B's
    assert retained(bus, "dev-a") != stored.envelope
    assert desired.unpublished() == ["dev-a"]
    assert await DesiredPublisher(desired, FakeBus(), TOPICS, clock=clock).publish_pending() == 1
    assert desired.unpublished() == []


def test_no_renewal_job_without_a_validity(fleet_store: Store, signing_key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="validity"):
        Renewal(DesiredStore(fleet_store, signing_key))
