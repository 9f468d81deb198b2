"""Cloud messages: JSON round trips through CLOUD_MESSAGE, strictness, and ranges_of."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_protocol import PROTOCOL_VERSION
from edge_protocol.aggregate import FieldAccumulator, WindowResult
from edge_protocol.messages import CLOUD_MESSAGE, Ack, AggregateBatch, SequencedResult, Status, ranges_of


def _result(n: int) -> WindowResult:
    acc = FieldAccumulator()
    for i in range(n):
        acc.add(float(i) * 1.5, 100.0 + i)
    return WindowResult(
        id=f"dev/s@rev/g/{n}.000/0",
        subscription="s",
        revision="rev",
        group="g",
        window_start=float(n),
        window_end=float(n) + 10,
        events=n,
        fields={"v": acc.freeze()},
        stats=["count", "mean"],
    )


MESSAGES = [
    AggregateBatch(device="dev", sent_at=1.5, records=[SequencedResult(seq=i, result=_result(i)) for i in (1, 2, 5)]),
    Ack(device="dev", ranges=[(1, 3), (7, 7)]),
    Status(device="dev", online=True, agent_version="0.1.0", ts=12.25),
    Status(device="dev", online=False, ts=0.0),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_json_round_trip(msg: AggregateBatch | Ack | Status) -> None:
    raw = msg.model_dump_json().encode()
    back = CLOUD_MESSAGE.validate_json(raw)
    assert type(back) is type(msg)
    assert back == msg
    assert back.v == PROTOCOL_VERSION


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_unknown_field_rejected(msg: AggregateBatch | Ack | Status) -> None:
    data = msg.model_dump(mode="json")
    data["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        CLOUD_MESSAGE.validate_python(data)


def test_unknown_field_in_nested_result_rejected() -> None:
    data = MESSAGES[0].model_dump(mode="json")
    data["records"][0]["result"]["extra"] = True
    with pytest.raises(ValidationError, match="extra"):
        CLOUD_MESSAGE.validate_python(data)


def test_unknown_kind_and_empty_lists_rejected() -> None:
    with pytest.raises(ValidationError):
        CLOUD_MESSAGE.validate_json(b'{"kind":"nope","device":"d"}')
    with pytest.raises(ValidationError):
        CLOUD_MESSAGE.validate_python({"kind": "ack", "device": "d", "ranges": []})
    with pytest.raises(ValidationError):
        CLOUD_MESSAGE.validate_python({"kind": "aggregates", "device": "d", "sent_at": 0, "records": []})
    with pytest.raises(ValidationError):
        SequencedResult(seq=0, result=_result(1))


def test_messages_are_frozen() -> None:
    with pytest.raises(ValidationError):
        MESSAGES[2].online = False  # type: ignore[misc]


def test_ack_covers() -> None:
    ack = Ack(device="d", ranges=[(1, 3), (7, 7)])
    assert [s for s in range(10) if ack.covers(s)] == [1, 2, 3, 7]


@pytest.mark.parametrize(
    ("seqs", "ranges"),
    [([], []), ([5], [(5, 5)]), ([1, 2, 3, 7], [(1, 3), (7, 7)]), ([3, 1, 2, 2, 9, 8], [(1, 3), (8, 9)])],
)
def test_ranges_of_examples(seqs: list[int], ranges: list[tuple[int, int]]) -> None:
    assert ranges_of(seqs) == ranges


@given(st.lists(st.integers(min_value=1, max_value=200), max_size=80))
def test_ranges_of_properties(seqs: list[int]) -> None:
    ranges = ranges_of(seqs)
    covered = [s for lo, hi in ranges for s in range(lo, hi + 1)]
    assert covered == sorted(set(seqs))  # exactly the input set, in order, each once
    for lo, hi in ranges:
        assert lo <= hi
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert lo > hi + 1  # sorted, non-overlapping and non-adjacent
    if seqs:
        ack = Ack(device="d", ranges=ranges)
        assert all(ack.covers(s) for s in seqs)
