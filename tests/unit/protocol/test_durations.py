"""parse_duration / format_duration: spellings, errors and the round trip."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from edge_protocol.durations import Duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
        ("1.5s", 1.5),
        (" 1h 30m ", 5400.0),
        ("42", 42.0),
        ("0.5", 0.5),
        (7, 7.0),
        (2.5, 2.5),
        ("0s", 0.0),
    ],
)
def test_parse_spellings(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10, "10s"), (60, "1m"), (5400, "90m"), (3600, "1h"), (86400, "1d"), (1.5, "1.5s"), (0, "0s"), (0.25, "0.25s")],
)
def test_format_shortest(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["", "abc", "10x", "1h30", "s", "10s5", "-5s", "1.s", "h1"])
def test_parse_rejects_garbage_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration") as info:
        parse_duration(text)
    assert "'10s'" in str(info.value)


@pytest.mark.parametrize("value", [-1, -0.5, "-3"])
def test_parse_rejects_negative(value: str | float) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_rejects_bool(value: bool) -> None:
    with pytest.raises(ValueError, match="number of seconds"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["inf", "nan", "Infinity", math.inf, math.nan])
def test_parse_rejects_non_finite(value: str | float) -> None:
    with pytest.raises(ValueError, match="finite"):
        parse_duration(value)


@pytest.mark.parametrize("seconds", [1.2345678, 1e-05, 1234567.5, 0.1, 1e-7, 123456789.123])
def test_format_is_exact_for_awkward_values(seconds: float) -> None:
    text = format_duration(seconds)
    assert "e" not in text
    assert parse_duration(text) == seconds


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False, allow_subnormal=False))
def test_round_trip_float(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**9))
def test_round_trip_integer_seconds(seconds: int) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert "." not in text


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=10_000), st.sampled_from(["ms", "s", "m", "h", "d"])),
        min_size=1,
        max_size=5,
    )
)
def test_parse_sums_parts(parts: list[tuple[int, str]]) -> None:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == pytest.approx(sum(n * units[u] for n, u in parts), rel=1e-12, abs=1e-12)


class _Model(BaseModel):
    d: Duration


def test_duration_type_parses_and_serialises() -> None:
    m = _Model.model_validate({"d": "1h30m"})
    assert m.d == 5400.0
    assert m.model_dump() == {"d": "90m"}
    assert _Model.model_validate_json(m.model_dump_json()) == m
    with pytest.raises(ValidationError, match="not a duration"):
        _Model.model_validate({"d": "soon"})
