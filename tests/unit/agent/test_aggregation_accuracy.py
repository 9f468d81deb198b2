"""Issue 6's accuracy tests through the agent's own aggregation path, on randomized data (hypothesis).

Every statistic a subscription can ask for is checked against a reference computed here: exact for count, min,
max, first and last; ``math.fsum``-based sums and moments within 1e-9 relative; quantiles within the sketch's 1%
of the exact lower-rank quantile (numpy's ``method="lower"``: the value at index floor(q * (n - 1)) of the sorted
data). Fleet-wide: windows of several simulated devices merged (``FieldState.merge`` and ``hub.ingest.rollup``) against
the pooled data. Windows: out-of-order and late events (WindowSet and Dispatcher), session gaps, hopping overlaps.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections import defaultdict
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.aggregation.windows import WindowSet, numeric_values
from edge_agent.broker import Incoming
from edge_agent.dispatcher import Dispatcher
from edge_agent.outbox import Outbox
from edge_agent.runtime.base import FunctionRuntime
from edge_protocol.aggregate import FieldState, WindowResult
from edge_protocol.deadletter import DeadLetter
from edge_protocol.sketch import RELATIVE_ACCURACY
from edge_protocol.specs import SubscriptionSpec, quantile_of
from hub.ingest.aggregates import StoredAggregate
from hub.ingest.rollup import rollup

FAR = 1e12
QUANTILES = ["p50", "p90", "p95", "p99", "p37.5"]
ALL_STATS = ["count", "sum", "min", "max", "mean", "stddev", "first", "last", *QUANTILES]

# Values: |v| in [1e-300, 1e6], exact zeros, both signs. Below ~2.3e-308 DDSketch's mapping counts a value as
# zero (its documented floor), so the relative guarantee starts above it; the sketch must still be right near 0.
values_st = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: 0.0 if abs(v) < 1e-300 else v),
    st.sampled_from([0.0, -0.0, 1e-300, -1e-300, 1e-9, -1e-9, 1.0, -1.0]),
    st.floats(min_value=0.5, max_value=2.0),  # a tight cluster: quantiles in neighbouring sketch bins
)


def spec(window: dict[str, Any], stats: list[str] | None = None, **kw: Any) -> SubscriptionSpec:
    return SubscriptionSpec(
        name="acc", topic="sensors/#", handler="h", window=window, stats=stats or ALL_STATS, fields=["v"], **kw
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
    m2 = math.fsum((v - mean) ** 2 for v in values)
    floor = 1e-6 * n * peak * peak
    assert abs(state.m2 - m2) <= 1e-9 * max(m2, floor), (state.m2, m2)
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


# -- out-of-order and late events ------------------------------------------------------------------------------
SIZE, LATENESS = 10.0, 5.0


class Reference:
    """Brute force of the documented rule: a window closes when its end is behind now - lateness; an event whose
    window closed is late. Windows: start -> values."""

    def __init__(self) -> None:
        self.watermark = -math.inf
        self.windows: dict[float, list[float]] = defaultdict(list)
        self.late: list[int] = []

    def event(self, i: int, ts: float, value: float) -> bool:
        start = math.floor(ts / SIZE) * SIZE
        if start + SIZE <= self.watermark:
            self.late.append(i)
            return False
        self.windows[start].append(value)
        return True

    def close(self, now: float) -> None:
        self.watermark = max(self.watermark, now - LATENESS)


disorder = st.lists(
    st.tuples(st.floats(0.0, 3 * LATENESS), st.integers(-1000, 1000).map(float)), min_size=1, max_size=80
)


def check_windows(results: list[WindowResult], ref: Reference) -> None:
    got = {r.window_start: r for r in results}
    assert len(got) == len(results), "a window emitted twice"
    assert sorted(got) == sorted(ref.windows)
    for start, vals in ref.windows.items():
        r = got[start]
        assert (r.window_end, r.events) == (start + SIZE, len(vals))
        f = r.fields["v"]
        assert (f.count, f.min, f.max) == (len(vals), min(vals), max(vals))
        assert f.sum == math.fsum(vals)  # integers: every partial sum is exact


@given(disorder, st.floats(0.05, 2.0))
@settings(max_examples=200)
def test_out_of_order_within_lateness_lands_late_is_refused(events: list[tuple[float, float]], step: float) -> None:
    ws = WindowSet(spec({"kind": "tumbling", "size": SIZE}, lateness=LATENESS), "dev")
    ref = Reference()
    results: list[WindowResult] = []
    for i, (delay, value) in enumerate(events):
        now = 100.0 + i * step  # arrival (wall clock); the event happened `delay` earlier
        ts = now - delay
        accepted = ws.add("", {"v": value}, ts)
        assert accepted == ref.event(i, ts, value), (i, ts)
        if delay <= LATENESS:
            assert accepted, f"an event {delay:.3f}s late, within the lateness, was refused"
        results += ws.close_due(now)
        ref.close(now)
    results += ws.close_due(FAR)
    assert ws.late == len(ref.late)
    check_windows(results, ref)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_dispatcher_dead_letters_late_events_and_windows_the_rest(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    stats = ["count", "sum", "min", "max", "p50"]
    s = spec({"kind": "tumbling", "size": SIZE}, stats=stats, lateness=LATENESS, event_time_field="t")
    clock = Clock(1000.0)
    sent: list[tuple[str, bytes]] = []
    acked: list[int] = []

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> Awaitable[None] | None:
        sent.append((topic, payload))
        return None

    ref = Reference()
    payloads: dict[int, bytes] = {}
    async with Outbox(tmp_path / "outbox.sqlite", clock=clock) as outbox:
        d = Dispatcher(
            s,
            runtime=FunctionRuntime("h", lambda _topic, payload, _ts: {"v": payload["v"]}),
            windows=WindowSet(s, "dev"),
            outbox=outbox,
            publish=publish,
            ack=lambda m: acked.append(m.mid),
            deadletter_topic="dl/acc",
            max_payload=1024,
            clock=clock,
        )
        task = asyncio.create_task(d.run())
        for i in range(1, 61):
            clock.t += rng.uniform(0.1, 2.0)
            delay = rng.uniform(0.0, 3 * LATENESS)
            value = float(rng.randint(-1000, 1000))
            ts = clock.t - delay
            ref.event(i, ts, value)
            payload = payloads[i] = orjson.dumps({"v": value, "t": ts})
            await d.put(Incoming(mid=i, topic="sensors/a", payload=payload, qos=1, dup=False, arrived=clock.t))
            async with asyncio.timeout(5):
                while len(acked) < i:
                    await asyncio.sleep(0)
            ref.close(clock.t)  # the batch of one event closed what the clock made due
        await d.retire()  # emits every open window
        await asyncio.wait_for(task, 5)
        results = [WindowResult.model_validate_json(b) for _, b in await outbox.fetch(0, 1000)]
    letters = [DeadLetter.model_validate_json(p) for t, p in sent if t == "dl/acc"]
    assert ref.late, "the seed must produce late events"
    assert [d.reason for d in letters] == ["late"] * len(ref.late)
    assert [d.payload_bytes() for d in letters] == [payloads[i] for i in ref.late]
    assert d.counters.dead_lettered == {"late": len(ref.late)}
    assert d.windows.late == len(ref.late)
    assert d.counters.processed == 60 - len(ref.late)
    assert sorted(acked) == list(range(1, 61))  # late events are acknowledged too, never held
    check_windows(results, ref)


async def test_checkpoint_of_a_window_with_quantiles_commits(tmp_path: Path) -> None:
    s = spec({"kind": "tumbling", "size": 10}, stats=["count", "p99"])
    ws = WindowSet(s, "dev")
    for i in range(100):
        ws.add("", {"v": float(i)}, i / 20)
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        await outbox.commit([], {"acc": ws.snapshot()})  # what Dispatcher._commit does after every batch
        (snap,) = (await outbox.checkpoints()).values()
    again = WindowSet(s, "dev")
    assert again.restore(snap)
    (r,) = again.close_due(FAR)
    assert r.fields["v"].statistic("p99") == pytest.approx(98.0, rel=RELATIVE_ACCURACY)


# -- session windows -------------------------------------------------------------------------------------------
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 400), st.integers(-50, 50)), max_size=60),
    st.sampled_from([1.1, 4.9, 7.3]),
)
@settings(max_examples=200)
def test_session_windows_split_by_gap(events: list[tuple[str, int, int]], gap: float) -> None:
    events = sorted(events, key=lambda e: e[1])  # in order; the clock follows event time
    ws = WindowSet(spec({"kind": "session", "gap": gap}), "dev")
    results: list[WindowResult] = []
    for group, t, v in events:
        ts = t / 4
        assert ws.add(group, {"v": float(v)}, ts)
        results += ws.close_due(ts)
    results += ws.close_due(FAR)
    expected: list[tuple[str, float, float, int, float]] = []
    for group in ("a", "b"):
        current: list[tuple[float, float]] = []
        for ts, v in [(t / 4, float(v)) for g, t, v in events if g == group] + [(math.inf, 0.0)]:
            if current and ts - current[-1][0] > gap:
                expected.append((group, current[0][0], current[-1][0] + gap, len(current),
                                 math.fsum(x for _, x in current)))
                current = []
            current.append((ts, v))
    got = [(r.group, r.window_start, r.window_end, r.events, r.fields["v"].sum) for r in results]
    assert sorted(got) == sorted(expected)
    assert len({r.id for r in results}) == len(results)


def test_out_of_order_event_before_a_gap_is_its_own_session() -> None:
    ws = WindowSet(spec({"kind": "session", "gap": 5}, lateness=1000), "dev")
    assert ws.add("", {"v": 1.0}, 100.0)
    assert ws.add("", {"v": 2.0}, 80.0)  # 20 s before the session, within the lateness: not late
    got = [(r.window_start, r.window_end, r.events) for r in ws.close_due(FAR)]
    assert got == [(80.0, 85.0, 1), (100.0, 105.0, 1)]


def test_an_event_exactly_the_gap_later_starts_the_next_session() -> None:
    ws = WindowSet(spec({"kind": "session", "gap": 5}), "dev")
    assert ws.add("", {"v": 1.0}, 0.0)
    results = ws.close_due(5.0)  # the wall clock reaches end + gap: the session [0, 5) is over
    assert ws.add("", {"v": 2.0}, 5.0)  # 5 - 0 is the gap itself: the next session, not late
    results += ws.close_due(FAR)
    assert [(r.window_start, r.window_end, r.events) for r in results] == [(0.0, 5.0, 1), (5.0, 10.0, 1)]
    assert ws.late == 0


# -- hopping windows -------------------------------------------------------------------------------------------
@given(
    st.sampled_from([(10.0, 5.0), (10.0, 2.5), (10.0, 4.0), (10.0, 3.0), (6.0, 6.0), (1.0, 0.25), (5.0, 1.25)]),
    st.lists(st.tuples(st.integers(0, 4000), st.integers(-100, 100)), min_size=1, max_size=60),
)
@settings(max_examples=200)
def test_hopping_counts_each_event_in_every_covering_window(
    size_hop: tuple[float, float], events: list[tuple[int, int]]
) -> None:
    size, hop = size_hop
    ws = WindowSet(spec({"kind": "hopping", "size": size, "hop": hop}), "dev")
    obs = [(t / 16, float(v)) for t, v in events]  # out of order, exact binary fractions
    for ts, v in obs:
        assert ws.add("", {"v": v}, ts)
    results = ws.close_due(FAR)
    expected: dict[float, list[float]] = {}
    lo, hi = min(ts for ts, _ in obs), max(ts for ts, _ in obs)
    for k in range(math.floor((lo - size) / hop) - 1, math.floor(hi / hop) + 2):
        start = k * hop
        inside = [v for ts, v in obs if start <= ts < start + size]
        if inside:
            expected[start] = inside
    got = {r.window_start: r for r in results}
    assert len(got) == len(results) == len({r.id for r in results})
    assert sorted(got) == sorted(expected)
    for start, inside in expected.items():
        r = got[start]
        assert (r.window_end, r.events, r.fields["v"].count) == (start + size, len(inside), len(inside))
        assert r.fields["v"].sum == math.fsum(inside)
    assert sum(r.events for r in results) == sum(len(v) for v in expected.values())


def test_hopping_with_a_decimal_hop_emits_each_window_once() -> None:
    ws = WindowSet(spec({"kind": "hopping", "size": "900ms", "hop": "300ms"}), "dev")
    for ts in (0.65, 0.95):
        assert ws.add("", {"v": 1.0}, ts)
    results = ws.close_due(FAR)
    assert len({r.id for r in results}) == len(results)
    assert sorted((round(r.window_start, 6), r.events) for r in results) == [
        (0.0, 1), (0.3, 2), (0.6, 2), (0.9, 1)
    ]
