"""FieldState merging (Chan et al.) and the FieldAccumulator (Welford) against exact references."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_protocol.aggregate import FieldAccumulator, FieldState, WindowResult, window_id

# A sane range: |v| in [1e-6, 1e6] or 0, so that squares neither overflow nor underflow.
values_st = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False).map(
    lambda v: 0.0 if abs(v) < 1e-6 else v
)
samples = st.lists(values_st, min_size=1, max_size=40)


def state_of(values: list[float], t0: float = 0.0) -> FieldState:
    acc = FieldAccumulator()
    for i, v in enumerate(values):
        acc.add(v, t0 + i)
    return acc.freeze()


def exact_mean_m2(values: list[float]) -> tuple[Fraction, Fraction]:
    xs = [Fraction(v) for v in values]
    mean = sum(xs, Fraction(0)) / len(xs)
    return mean, sum(((x - mean) ** 2 for x in xs), Fraction(0))


def close(got: float, want: Fraction, scale: float) -> bool:
    """Within 1e-9 relative to the result, or to ``scale`` (the magnitude rounding errors are relative to)."""
    return abs(Fraction(got) - want) <= Fraction(1e-9) * max(abs(want), Fraction(scale))


def check_moments(state: FieldState, values: list[float]) -> None:
    mean, m2 = exact_mean_m2(values)
    peak = max(abs(v) for v in values)
    assert close(state.mean, mean, peak), (state.mean, float(mean))
    # M2 cancels catastrophically when the spread is tiny next to the mean: its error is relative to n * peak^2.
    assert close(state.m2, m2, 1e-6 * len(values) * peak * peak), (state.m2, float(m2))


@given(samples, samples)
def test_merge_matches_one_pass(a: list[float], b: list[float]) -> None:
    merged = state_of(a).merge(state_of(b, t0=1000.0))
    both = a + b
    assert merged.count == len(both)
    assert merged.min == min(both)
    assert merged.max == max(both)
    assert merged.sum == pytest.approx(math.fsum(both), rel=1e-9, abs=1e-9 * sum(map(abs, both)))
    check_moments(merged, both)
    assert merged.first == a[0]
    assert merged.last == b[-1]


@given(samples, samples)
def test_merge_commutative(a: list[float], b: list[float]) -> None:
    sa, sb = state_of(a), state_of(b, t0=1000.0)
    ab, ba = sa.merge(sb), sb.merge(sa)
    assert (ab.count, ab.sum, ab.min, ab.max) == (ba.count, ba.sum, ba.min, ba.max)
    assert ab.mean == pytest.approx(ba.mean, rel=1e-12, abs=1e-9)
    assert (ab.first, ab.first_ts, ab.last, ab.last_ts) == (ba.first, ba.first_ts, ba.last, ba.last_ts)


@given(samples, samples, samples)
@settings(max_examples=150)
def test_merge_associative(a: list[float], b: list[float], c: list[float]) -> None:
    sa, sb, sc = state_of(a), state_of(b, t0=1000.0), state_of(c, t0=2000.0)
    left, right = sa.merge(sb).merge(sc), sa.merge(sb.merge(sc))
    allv = a + b + c
    assert left.count == right.count == len(allv)
    assert left.min == right.min == min(allv)
    assert left.max == right.max == max(allv)
    assert left.sum == pytest.approx(right.sum, rel=1e-9, abs=1e-9 * sum(map(abs, allv)))
    check_moments(left, allv)
    check_moments(right, allv)
    assert (left.first, left.last) == (right.first, right.last) == (a[0], c[-1])


@given(samples)
def test_accumulator_matches_fsum(values: list[float]) -> None:
    state = state_of(values)
    assert state.count == len(values)
    assert state.sum == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-9 * sum(map(abs, values)))
    assert state.mean == pytest.approx(math.fsum(values) / len(values), rel=1e-9, abs=1e-9 * max(map(abs, values)))
    check_moments(state, values)
    assert (state.min, state.max) == (min(values), max(values))
    assert (state.first, state.first_ts) == (values[0], 0.0)
    assert (state.last, state.last_ts) == (values[-1], float(len(values) - 1))
    assert state.stddev == pytest.approx(math.sqrt(state.m2 / len(values)))


@given(samples)
def test_thaw_freeze_round_trip(values: list[float]) -> None:
    state = state_of(values)
    assert FieldAccumulator.thaw(state).freeze() == state
    assert FieldState.model_validate_json(state.model_dump_json()) == state


def test_first_last_by_time_not_arrival() -> None:
    acc = FieldAccumulator()
    acc.add(5.0, 10.0)
    acc.add(1.0, 5.0)  # earlier event arriving later
    acc.add(9.0, 7.0)
    state = acc.freeze()
    assert (state.first, state.first_ts) == (1.0, 5.0)
    assert (state.last, state.last_ts) == (5.0, 10.0)


def test_empty_and_non_finite_states_are_refused() -> None:
    # JSON has no inf: an empty state (min=+inf) or an overflowed sum must fail here, not at the hub.
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        FieldState(count=0, sum=0, mean=0, m2=0, min=0, max=0, first=0, first_ts=0, last=0, last_ts=0)
    with pytest.raises(ValueError, match="finite"):
        FieldState(count=1, sum=float("inf"), mean=0, m2=0, min=0, max=0, first=0, first_ts=0, last=0, last_ts=0)


def test_known_values_and_statistics() -> None:
    s = state_of([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert s.mean == 5.0
    assert s.variance == 4.0
    assert s.statistic("stddev") == 2.0
    assert s.statistic("count") == 8.0
    assert s.statistic("first") == 2.0
    assert s.statistic("last") == 9.0
    assert s.statistic("p99") is None


def test_field_state_is_frozen_and_strict() -> None:
    s = state_of([1.0])
    with pytest.raises(ValidationError):
        s.count = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        FieldState.model_validate({**s.model_dump(), "bogus": 1})
    with pytest.raises(ValidationError):
        FieldState.model_validate({**s.model_dump(), "m2": -1.0})


def test_window_id_is_stable() -> None:
    assert window_id("d", "s", "rev", "g=1", 12.0) == "d/s@rev/g=1/12.000/0"
    assert window_id("d", "s", "rev", "", 12.0004, part=2) == "d/s@rev//12.000/2"
    r = WindowResult(
        id="x",
        subscription="s",
        revision="r",
        window_start=0,
        window_end=10,
        events=1,
        fields={"v": state_of([1.0])},
        stats=["mean"],
    )
    assert WindowResult.model_validate_json(r.model_dump_json()) == r
