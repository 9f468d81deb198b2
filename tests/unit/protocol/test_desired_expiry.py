"""Signed desired state expires: ``expires_at`` is signed inside the document, an expired one is refused with
the caller's clock tolerance, and a document without it (an older hub's) verifies unless an expiry is required."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_protocol.desired import DesiredDocument, DesiredRefused, sign_document, verify_document, verify_signed
from edge_protocol.messages import Reported

KEY = Ed25519PrivateKey.generate()


def signed(expires_at: float | None, version: int = 1) -> bytes:
    doc = DesiredDocument(device="d", version=version, issued_at=1_000.0, expires_at=expires_at)
    return sign_document(doc, KEY).model_dump_json().encode()


def test_an_expired_document_is_refused_as_expired() -> None:
    payload = signed(expires_at=2_000.0)
    assert verify_document(payload, KEY.public_key(), "d", now=2_000.0).expires_at == 2_000.0
    with pytest.raises(DesiredRefused) as refused:
        verify_document(payload, KEY.public_key(), "d", now=2_000.5)
    assert refused.value.reason == "expired"
    # The signature alone still checks out: a caller that runs it anyway (its last good state) can tell.
    assert verify_signed(payload, KEY.public_key(), "d").version == 1


def test_the_clock_tolerance_is_honoured_and_no_more() -> None:
    payload = signed(expires_at=2_000.0)
    assert verify_document(payload, KEY.public_key(), "d", now=2_299.0, tolerance=300.0).version == 1
    with pytest.raises(DesiredRefused, match=r"^expired"):
        verify_document(payload, KEY.public_key(), "d", now=2_301.0, tolerance=300.0)


def test_the_expiry_is_signed() -> None:
    envelope = json.loads(signed(expires_at=2_000.0))
    envelope["document"] = envelope["document"].replace("2000.0", "9000.0")
    with pytest.raises(DesiredRefused) as refused:
        verify_document(json.dumps(envelope).encode(), KEY.public_key(), "d", now=3_000.0)
    assert refused.value.reason == "bad-signature"


def test_a_document_without_expiry_never_expires_unless_one_is_required() -> None:
    payload = signed(expires_at=None)
    # An older agent rejects unknown keys: without an expiry the signed text does not mention it.
    assert "expires_at" not in json.loads(payload)["document"]
    assert verify_document(payload, KEY.public_key(), "d", now=1e12).expires_at is None
    with pytest.raises(DesiredRefused) as refused:
        verify_document(payload, KEY.public_key(), "d", now=1_000.0, require_expiry=True)
    assert refused.value.reason == "no-expiry"


def test_reported_carries_refusal_counts_only_when_there_are_some() -> None:
    quiet = Reported(device="d", ts=1.0)
    assert b"desired_" not in quiet.wire()  # an older hub, which rejects unknown keys, still reads it
    loud = Reported(device="d", ts=1.0, desired_refusals={"expired": 2}, desired_expires_at=5.0)
    assert Reported.model_validate_json(loud.wire()) == loud
