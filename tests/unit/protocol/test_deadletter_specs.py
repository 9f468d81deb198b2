"""Dead-letter records and the shared specs' validation rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_protocol.deadletter import DeadLetter
from edge_protocol.specs import SubscriptionSpec, WindowSpec, parse_statistic, quantile_of


@given(st.binary(max_size=64))
def test_deadletter_payload_round_trip(payload: bytes) -> None:
    dl = DeadLetter.of(
        reason="invalid-json", detail="d" * 2000, subscription="s", handler="h", topic="t", payload=payload, ts=1.0
    )
    back = DeadLetter.model_validate_json(dl.model_dump_json())
    assert back.payload_bytes() == payload
    assert len(back.detail) == 1000
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        assert back.payload_encoding == "base64"
    else:
        assert back.payload_encoding == "utf-8"
        assert back.payload == payload.decode()


def test_window_spec_shapes() -> None:
    assert WindowSpec(kind="hopping", size="10s", hop="5s").hop == 5.0
    for bad in (
        {"kind": "hopping", "size": 10},
        {"kind": "hopping", "size": 10, "hop": 20},
        {"kind": "tumbling", "hop": 1},
        {"kind": "session"},
        {"kind": "tumbling", "gap": 1},
        {"size": 0},
    ):
        with pytest.raises(ValidationError):
            WindowSpec.model_validate(bad)


def test_statistics() -> None:
    assert parse_statistic(" Mean ") == "mean"
    assert parse_statistic("p99.9") == "p99.9"
    assert quantile_of("p95") == 0.95
    assert quantile_of("mean") is None
    for bad in ("median", "p0", "p100", "p"):
        with pytest.raises(ValueError, match="unknown statistic"):
            parse_statistic(bad)


def test_subscription_spec_rules_and_revision() -> None:
    spec = SubscriptionSpec(name="temp", topic="sensors/+/temp", handler="h")
    assert spec.revision == SubscriptionSpec(name="temp", topic="sensors/+/temp", handler="h").revision
    assert spec.revision != SubscriptionSpec(name="temp", topic="sensors/#", handler="h").revision
    with pytest.raises(ValidationError, match="whole"):
        SubscriptionSpec(name="temp", topic="a/b#", handler="h")
    with pytest.raises(ValidationError, match="topic\\[N\\]"):
        SubscriptionSpec(name="temp", topic="a", handler="h", group_by=["topic[x]"])
    with pytest.raises(ValidationError):
        SubscriptionSpec(name="Temp!", topic="a", handler="h")
    with pytest.raises(ValidationError, match="at least one"):
        SubscriptionSpec(name="temp", topic="a", handler="h", stats=[])
