"""Issue 6's accuracy tests through the agent's own aggregation path, on randomized data (hypothesis).

Every statistic a subscription can ask for is checked against a reference computed here: exact for count, min,
max, first and last; ``math.fsum``-based sums and moments within 1e-9 relative; quantiles within the sketch's 1%
of the exact lower-rank quantile (numpy's ``method="lower"``: the value at index floor(q * (n - 1)) of the sorted
data). Fleet-wide: windows of several simulated devices merged (``FieldState.merge`` and ``hub.ingest.rollup``) against
the pooled data. Windows (out-of-order and late events, session gaps, hopping overlaps) are in
test_window_accuracy.py.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.aggregation.windows import WindowSet, numeric_values
from edge_agent.outbox import Outbox
from edge_protocol.aggregate import FieldState, WindowResult
from edge_protocol.sketch import RELATIVE_ACCURACY
from edge_protocol.specs import quantile_of
from hub.ingest.aggregates import StoredAggregate
from hub.ingest.rollup import rollup
from tests.unit.agent.accuracy import FAR, spec

# Values: |v| in [1e-300, 1e6], exact zeros, both signs. Below ~2.3e-308 DDSketch's mapping counts a value as
# zero (its documented floor), so the relative guarantee starts above it; the sketch must still be right near 0.
values_st = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: 0.0 if abs(v) < 1e-300 else v),
    st.sampled_from([0.0, -0.0, 1e-300, -1e-300, 1e-9, -1e-9, 1.0, -1.0]),
    st.floats(min_value=0.5, max_value=2.0),  # a tight cluster: quantiles in neighbouring sketch bins
)


def wire(result: WindowResult) -> WindowResult:
    """The result as the hub decodes it."""
    return WindowResult.model_validate_json(result.model_dump_json())


def lower_quantile(ordered: list[float], q: float) -> float:
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_matches(state: FieldState, values: list[float], times: list[float], stats: list[str]) -> None:
    """``state`` against references computed from ``values`` (observed at event ``times``, all distinct)."""
    n = len(values)
    assert state.count == n
    assert (state.min, state.max) == (min(values), max(values))
    assert (state.first, state.first_ts) == min(zip(times, values, strict=True))[::-1]
    assert (state.last, state.last_ts) == max(zip(times, values, strict=True))[::-1]
    # Sums: 1e-9 relative to the fsum, or to sum(|v|) when positives and negatives cancel.
    total = math.fsum(values)
    magnitude = math.fsum(abs(v) for v in values)
    assert abs(state.sum - total) <= 1e-9 * max(abs(total), magnitude), (state.sum, total)
    mean = total / n
    peak = max(abs(v) for v in values)
    assert abs(state.mean - mean) <= 1e-9 * max(abs(mean), peak), (state.mean, mean)
    # M2: 1e-9 relative; when the spread is tiny next to the values, rounding is relative to n * peak^2 * 1e-6.
    # Squares of values near 1e-160 are subnormal, where a double has no relative precision left: below the
    # smallest normal double, one rounding step already exceeds 1e-9 relative.
    m2 = math.fsum((v - mean) ** 2 for v in values)
    floor = 1e-6 * n * peak * peak
    assert abs(state.m2 - m2) <= max(1e-9 * max(m2, floor), sys.float_info.min), (state.m2, m2)
    assert state.stddev == pytest.approx(math.sqrt(state.m2 / n), rel=1e-15)  # population: divides by n
    if m2 >= floor:
        assert state.stddev == pytest.approx(math.sqrt(m2 / n), rel=1e-9)
    ordered = sorted(values)
    for name in stats:
        got = state.statistic(name)
        q = quantile_of(name)
        if q is not None:
            exact = lower_quantile(ordered, q)
            assert got is not None, name
            assert abs(got - exact) <= RELATIVE_ACCURACY * abs(exact) * (1 + 1e-9), (name, got, exact)
        elif name in ("count", "min", "max", "first", "last"):
            assert got == getattr(state, name)
    assert state.sketch is not None
    assert state.sketch.count == n


# -- every function, through WindowSet -------------------------------------------------------------------------
@given(
    st.lists(values_st, min_size=1, max_size=60),
    st.randoms(use_true_random=False),
    st.integers(min_value=0, max_value=60),
)
@settings(max_examples=200)
def test_every_statistic_of_one_window(values: list[float], rng: random.Random, restart_at: int) -> None:
    s = spec({"kind": "tumbling", "size": 10})
    times = [i * 9.99 / len(values) for i in range(len(values))]  # distinct, all in [0, 10)
    order = list(range(len(values)))
    rng.shuffle(order)  # arrival order is not event-time order
    ws = WindowSet(s, "dev")
    for pos, i in enumerate(order):
        if pos == restart_at:  # an agent restart in the middle of the window: checkpoint, JSON, restore
            # (stdlib json, which writes the sketch's int bin keys as strings; the outbox's orjson refuses them:
            # see test_checkpoint_of_a_window_with_quantiles_commits below)
            ws2 = WindowSet(s, "dev")
            assert ws2.restore(json.loads(json.dumps(ws.snapshot())))
            ws = ws2
        assert ws.add("", numeric_values({"v": values[i], "s": "text"}, s.fields), times[i])
    (result,) = [wire(r) for r in ws.close_due(FAR)]
    assert (result.window_start, result.window_end, result.events, result.stats) == (0.0, 10.0, len(values), s.stats)
    assert list(result.fields) == ["v"]
    assert_matches(result.fields["v"], values, times, s.stats)


def test_odd_quantile_is_accepted() -> None:
    assert spec({"kind": "tumbling", "size": 10}, stats=["p37.5"]).stats == ["p37.5"]
    assert quantile_of("p37.5") == 0.375


# -- fleet-wide: several devices' windows merged ----------------------------------------------------------------
fleet_events = st.lists(st.tuples(st.integers(0, 4), values_st), min_size=1, max_size=120)


@given(fleet_events, st.randoms(use_true_random=False))
@settings(max_examples=100)
def test_fleet_merge_equals_pooled_data(events: list[tuple[int, float]], rng: random.Random) -> None:
    s = spec({"kind": "tumbling", "size": 10})
    sets: dict[str, WindowSet] = {}
    pooled: dict[float, list[tuple[float, float]]] = defaultdict(list)  # window start -> (ts, value)
    arrivals = list(enumerate(events))
    rng.shuffle(arrivals)
    for i, (device, value) in arrivals:
        ts = i * 0.5  # distinct over the whole fleet, in [0, 60)
        name = f"dev-{device}"
        ws = sets.setdefault(name, WindowSet(s, name))
        assert ws.add("", {"v": value}, ts)
        pooled[math.floor(ts / 10) * 10].append((ts, value))
    results = {name: [wire(r) for r in ws.close_due(FAR)] for name, ws in sets.items()}

    # FieldState.merge, per window across devices, in a random order of devices
    everything: list[FieldState] = []
    for start, obs in pooled.items():
        states = [r.fields["v"] for rs in results.values() for r in rs if r.window_start == start]
        rng.shuffle(states)
        merged = states[0]
        for other in states[1:]:
            merged = merged.merge(other)
        assert_matches(merged, [v for _, v in obs], [t for t, _ in obs], s.stats)
        everything += states
    rng.shuffle(everything)
    merged_all = everything[0]
    for other in everything[1:]:
        merged_all = merged_all.merge(other)
    all_obs = [o for obs in pooled.values() for o in obs]
    assert_matches(merged_all, [v for _, v in all_obs], [t for t, _ in all_obs], s.stats)

    # The hub's roll-up: across devices per window, and into one 1 min bucket
    rows = [
        StoredAggregate(
            window_id=r.id, device=name, subscription=r.subscription, revision=r.revision, group=r.group,
            window_start=r.window_start, window_end=r.window_end, part=r.part, events=r.events, fields=r.fields,
            stats=r.stats, stored_at=0.0,
        )
        for name, rs in results.items()
        for r in rs
    ]
    per_window = rollup(rows, across_devices=True, every=None)
    assert sorted(r.aggregate.window_start for r in per_window) == sorted(pooled)
    for rolled in per_window:
        obs = pooled[rolled.aggregate.window_start]
        assert rolled.aggregate.events == len(obs)
        assert rolled.devices == len({row.device for row in rows if row.window_start == rolled.aggregate.window_start})
        assert_matches(rolled.aggregate.fields["v"], [v for _, v in obs], [t for t, _ in obs], s.stats)
    (minute,) = rollup(rows, across_devices=True, every=60.0)
    assert (minute.aggregate.window_start, minute.aggregate.window_end, minute.devices) == (0.0, 60.0, len(sets))
    assert minute.aggregate.events == len(events)
    assert_matches(minute.aggregate.fields["v"], [v for _, v in all_obs], [t for t, _ in all_obs], s.stats)


async def test_checkpoint_of_a_window_with_quantiles_commits(tmp_path: Path) -> None:
    s = spec({"kind": "tumbling", "size": 10}, stats=["count", "p99"])
    ws = WindowSet(s, "dev")
    for i in range(100):
        ws.add("", {"v": float(i)}, i / 20)
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        await outbox.commit([], {"acc": ws.snapshot()})  # what the dispatcher's group commit does after every batch
        (snap,) = (await outbox.checkpoints()).values()
    again = WindowSet(s, "dev")
    assert again.restore(snap)
    (r,) = again.close_due(FAR)
    assert r.fields["v"].statistic("p99") == pytest.approx(98.0, rel=RELATIVE_ACCURACY)
