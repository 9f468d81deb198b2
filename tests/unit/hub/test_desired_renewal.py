"""The hub's re-signing job: with an injected clock, the documents with less than half their validity left
(or none at all) are re-signed -- same version and content, later expiry, marked unpublished -- and the others
are left alone; a renewal raced by another writer is not made twice."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_protocol.desired import verify_document
from hub.db.store import Store
from hub.desired.documents import DesiredStore
from hub.desired.publisher import DesiredPublisher
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


def test_no_renewal_job_without_a_validity(fleet_store: Store, signing_key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="validity"):
        Renewal(DesiredStore(fleet_store, signing_key))
