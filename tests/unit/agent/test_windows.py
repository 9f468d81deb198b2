"""Tumbling, hopping and session windows; lateness; groups; checkpoints; numeric_values."""

from __future__ import annotations

import collections
import math
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.aggregation.windows import WindowSet, numeric_values
from edge_protocol.aggregate import window_id
from edge_protocol.specs import SubscriptionSpec

FAR = 1e12  # a `now` that closes everything


def spec(window: dict[str, Any], **kw: Any) -> SubscriptionSpec:
    return SubscriptionSpec(name="temp", topic="sensors/#", handler="h", window=window, **kw)


def tumbling(size: float = 10, **kw: Any) -> WindowSet:
    return WindowSet(spec({"kind": "tumbling", "size": size}, **kw), "dev")


# -- tumbling ------------------------------------------------------------------------------------------
def test_tumbling_assignment_and_close() -> None:
    ws = tumbling(10)
    for ts, v in [(0.0, 1.0), (3.0, 2.0), (9.999, 3.0), (10.0, 10.0), (25.0, 7.0)]:
        assert ws.add("", {"v": v}, ts)
    assert len(ws) == 3
    assert ws.close_due(9.99) == []
    first = ws.close_due(10.0)
    assert [(r.window_start, r.window_end, r.events) for r in first] == [(0.0, 10.0, 3)]
    f = first[0].fields["v"]
    assert (f.count, f.sum, f.min, f.max, f.first, f.last) == (3, 6.0, 1.0, 3.0, 1.0, 3.0)
    assert first[0].id == window_id("dev", "temp", ws.spec.revision, "", 0.0)
    assert first[0].stats == ws.spec.stats
    rest = ws.close_due(FAR)
    assert [(r.window_start, r.events, r.fields["v"].sum) for r in rest] == [(10.0, 1, 10.0), (20.0, 1, 7.0)]
    assert len(ws) == 0
    assert ws.close_due(FAR) == []


def test_tumbling_lateness_and_late_events() -> None:
    ws = tumbling(10, lateness="5s")
    assert ws.add("", {"v": 1.0}, 5.0)
    assert ws.next_close() == 15.0
    assert ws.close_due(14.9) == []  # lateness keeps [0, 10) open until now = 15
    assert ws.add("", {"v": 2.0}, 6.0)  # so a straggler still lands in it
    closed = ws.close_due(15.0)
    assert len(closed) == 1
    assert closed[0].events == 2
    # Its window was emitted: late, counted, not added anywhere (no second result under the same id).
    assert not ws.add("", {"v": 3.0}, 7.0)
    assert ws.late == 1
    assert len(ws) == 0
    assert not ws.add("", {"v": 3.0}, 9.999)
    assert ws.late == 2
    assert ws.add("", {"v": 3.0}, 10.0)  # the next window is still open
    assert ws.late == 2
    assert ws.close_due(FAR)[0].window_start == 10.0


def test_late_is_judged_by_the_last_close_not_by_event_age() -> None:
    ws = tumbling(10)
    assert ws.add("", {"v": 1.0}, 5.0)
    assert ws.add("", {"v": 1.0}, -500.0)  # old, but nothing was closed yet
    assert [r.window_start for r in ws.close_due(12.0)] == [-500.0, 0.0]
    assert not ws.add("", {"v": 1.0}, -400.0)  # now behind the close at 12
    assert ws.add("", {"v": 1.0}, 11.0)


def test_tumbling_events_without_values_still_count() -> None:
    ws = tumbling(10)
    assert ws.add("", {}, 1.0)
    (r,) = ws.close_due(FAR)
    assert (r.events, r.fields) == (1, {})


def test_group_separation() -> None:
    ws = tumbling(10)
    ws.add("site=b", {"v": 1.0}, 1.0)
    ws.add("site=a", {"v": 2.0}, 2.0)
    ws.add("site=b", {"v": 3.0}, 3.0)
    out = ws.close_due(FAR)
    assert [(r.group, r.events, r.fields["v"].sum) for r in out] == [("site=a", 1, 2.0), ("site=b", 2, 4.0)]
    assert out[0].id != out[1].id


@given(
    st.sampled_from([10.0, 2.5, 1.0, 0.1, 0.3, 60.0]),
    st.lists(st.floats(min_value=0, max_value=2e9, allow_nan=False), min_size=1, max_size=20),
)
@settings(max_examples=300)
def test_a_tumbling_window_takes_each_event_once(size: float, stamps: list[float]) -> None:
    """Each event lands in exactly one window: the one starting at the whole multiple of the size at or below
    it. (With a fractional size, the bounds of two neighbours are rounded apart, so an event near a bound could
    fall in both by their bounds alone.)"""
    ws = tumbling(size)
    for ts in stamps:
        assert ws.add("", {"v": ts}, ts)
    out = ws.close_due(FAR)
    assert sum(r.events for r in out) == len(stamps)
    want = collections.Counter(math.floor(ts / size) * size for ts in stamps)
    assert {r.window_start: r.events for r in out} == dict(want)
    assert all(r.window_end == r.window_start + size for r in out)


# -- hopping -------------------------------------------------------------------------------------------
@given(
    st.sampled_from([(10.0, 5.0), (10.0, 2.5), (6.0, 2.0), (4.0, 4.0), (1.0, 0.25)]),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
@settings(max_examples=300)
def test_hopping_event_lands_in_size_over_hop_windows(size_hop: tuple[float, float], ts: float) -> None:
    size, hop = size_hop
    ws = WindowSet(spec({"kind": "hopping", "size": size, "hop": hop}), "dev")
    assert ws.add("", {"v": 1.0}, ts)
    out = ws.close_due(FAR)
    assert len(out) == round(size / hop)
    for r in out:
        assert r.window_start <= ts < r.window_end
        assert r.window_end - r.window_start == size
        assert r.events == 1
    starts = [r.window_start for r in out]
    assert starts == sorted(starts)


@given(
    st.sampled_from([(1.0, 0.1), (0.3, 0.1), (0.6, 0.2), (2.5, 0.5), (0.9, 0.3), (10.0, 2.5)]),
    st.lists(st.floats(min_value=0, max_value=2e9, allow_nan=False), min_size=1, max_size=10),
)
@settings(max_examples=300)
def test_a_hopping_window_set_takes_each_event_size_over_hop_times(
    size_hop: tuple[float, float], stamps: list[float]
) -> None:
    """With a fractional hop, every event still lands in exactly size/hop windows, the last of them starting
    at the whole multiple of the hop at or below it. (Compared with their rounded bounds, an event near a bound
    could fall in one window more or one less.)"""
    size, hop = size_hop
    per_event = round(size / hop)
    ws = WindowSet(spec({"kind": "hopping", "size": size, "hop": hop}), "dev")
    for ts in stamps:
        assert ws.add("", {"v": 1.0}, ts)
    out = ws.close_due(FAR)
    assert sum(r.events for r in out) == per_event * len(stamps)
    want = collections.Counter((math.floor(ts / hop) - j) * hop for ts in stamps for j in range(per_event))
    assert {r.window_start: r.events for r in out} == dict(want)
    assert all(r.window_end == r.window_start + size for r in out)


def test_hopping_with_a_size_not_a_multiple_of_the_hop() -> None:
    ws = WindowSet(spec({"kind": "hopping", "size": 10, "hop": 4}), "dev")
    for ts in (1.0, 9.0):
        assert ws.add("", {"v": ts}, ts)
    out = ws.close_due(FAR)
    # 1.0 is in [-8, 2), [-4, 6), [0, 10); 9.0 in [0, 10), [4, 14), [8, 18).
    assert [(r.window_start, r.events) for r in out] == [(-8.0, 1), (-4.0, 1), (0.0, 2), (4.0, 1), (8.0, 1)]


def test_hopping_counts() -> None:
    ws = WindowSet(spec({"kind": "hopping", "size": 10, "hop": 5}), "dev")
    for ts in (1.0, 6.0, 11.0):
        ws.add("", {"v": ts}, ts)
    out = ws.close_due(FAR)
    assert [(r.window_start, r.events) for r in out] == [(-5.0, 1), (0.0, 2), (5.0, 2), (10.0, 1)]


# -- session -------------------------------------------------------------------------------------------
def session(gap: float = 5, **kw: Any) -> WindowSet:
    return WindowSet(spec({"kind": "session", "gap": gap}, **kw), "dev")


def test_session_closes_after_gap() -> None:
    ws = session(5)
    ws.add("", {"v": 1.0}, 0.0)
    ws.add("", {"v": 2.0}, 2.0)
    assert ws.next_close() == 7.0
    assert ws.close_due(6.9) == []
    (r,) = ws.close_due(7.0)
    assert (r.window_start, r.window_end, r.events, r.fields["v"].sum) == (0.0, 7.0, 2, 3.0)
    assert len(ws) == 0


def test_session_gap_splits_sessions() -> None:
    ws = session(5)
    for ts in (0.0, 2.0, 4.0, 8.0):  # 8 - 4 = 4: less than the gap, same session
        assert ws.add("", {"v": 1.0}, ts)
    assert ws.add("", {"v": 1.0}, 13.0)  # 13 - 8 = 5: the gap has passed (the first session ends at 13)
    assert ws.next_close() == 13.0
    (first,) = ws.close_due(13.0)
    assert (first.window_start, first.window_end, first.events) == (0.0, 13.0, 4)
    (second,) = ws.close_due(FAR)
    assert (second.window_start, second.window_end, second.events) == (13.0, 18.0, 1)


def test_session_groups_are_independent() -> None:
    ws = session(5)
    ws.add("a", {"v": 1.0}, 0.0)
    ws.add("b", {"v": 1.0}, 4.0)
    assert [r.group for r in ws.close_due(5.0)] == ["a"]
    assert [r.group for r in ws.close_due(9.0)] == ["b"]


def test_session_late_event() -> None:
    ws = session(5)
    assert ws.close_due(5.0) == []
    assert not ws.add("", {"v": 1.0}, 0.0)  # 0 + gap <= 5: its session would already have closed
    assert ws.late == 1
    assert len(ws) == 0
    assert ws.add("", {"v": 1.0}, 0.5)


def test_session_out_of_order_event_inside_open_session_is_not_late() -> None:
    ws = session(5)
    for ts in (10.0, 14.0, 20.0):
        ws.add("", {"v": 1.0}, ts)
    assert [r.window_start for r in ws.close_due(24.0)] == [10.0]  # [10, 14] ends at 19; [20] at 25
    # Event time 18 + gap is behind the last close, but it bridges into the session [20], still open.
    assert ws.add("", {"v": 5.0}, 18.0)
    assert ws.late == 0
    (r,) = ws.close_due(25.0)
    assert (r.window_start, r.events, r.fields["v"].max) == (18.0, 2, 5.0)


# -- checkpoints ---------------------------------------------------------------------------------------
events_st = st.lists(
    st.tuples(st.sampled_from(["", "g1", "g2"]), st.integers(0, 100), st.floats(-100, 100, allow_nan=False)),
    max_size=25,
)
WINDOWS = [
    {"kind": "tumbling", "size": 10},
    {"kind": "hopping", "size": 10, "hop": 5},
    {"kind": "session", "gap": 7},
]


@given(st.sampled_from(WINDOWS), events_st, st.integers(0, 120), events_st, st.integers(0, 150))
@settings(max_examples=150)
def test_snapshot_restore_round_trip(
    window: dict[str, Any],
    before: list[tuple[str, int, float]],
    close_at: int,
    after: list[tuple[str, int, float]],
    close_step: int,
) -> None:
    s = spec(window, lateness=3)
    original = WindowSet(s, "dev")
    for group, ts, v in sorted(before, key=lambda e: e[1]):
        original.add(group, {"v": v, "w": 1.0}, float(ts))
    original.close_due(float(close_at))  # close some, keep others open
    snap = orjson.loads(orjson.dumps(original.snapshot()))  # through JSON, like the outbox
    restored = WindowSet(s, "dev")
    assert restored.restore(snap)
    assert len(restored) == len(original)
    assert restored.next_close() == original.next_close()
    # Events after the restart are judged alike (late or not) and land in the same windows.
    for group, ts, v in after:
        assert restored.add(group, {"v": v}, float(ts)) == original.add(group, {"v": v}, float(ts))
    for now in (float(close_step), float(close_step) + 50, FAR):
        assert restored.close_due(now) == original.close_due(now)


def test_snapshot_keeps_a_session_ended_by_a_gap() -> None:
    s = spec({"kind": "session", "gap": 5})
    ws = WindowSet(s, "dev")
    ws.add("", {"v": 1.0}, 0.0)
    ws.add("", {"v": 2.0}, 100.0)  # ends the first session before close_due runs
    restored = WindowSet(s, "dev")
    assert restored.restore(orjson.loads(orjson.dumps(ws.snapshot())))
    assert [r.window_start for r in restored.close_due(FAR)] == [0.0, 100.0]


def test_restore_refuses_another_revision() -> None:
    old = WindowSet(spec({"kind": "tumbling", "size": 10}), "dev")
    old.add("", {"v": 1.0}, 1.0)
    snap = old.snapshot()
    changed = WindowSet(spec({"kind": "tumbling", "size": 20}), "dev")
    assert changed.spec.revision != old.spec.revision
    assert not changed.restore(snap)
    assert len(changed) == 0
    assert changed.close_due(FAR) == []
    assert not changed.restore({})


# -- numeric_values ------------------------------------------------------------------------------------
def test_numeric_values_filters() -> None:
    values = {
        "a": 1,
        "b": 2.5,
        "c": math.nan,
        "d": math.inf,
        "e": -math.inf,
        "s": "3",
        "t": True,
        "f": False,
        "n": None,
        "l": [1],
        "o": {"x": 1},
    }
    out = numeric_values(values, None)
    assert out == {"a": 1.0, "b": 2.5, "t": 1.0, "f": 0.0}
    assert all(type(v) is float for v in out.values())
    assert numeric_values(values, ["a", "c", "missing", "s"]) == {"a": 1.0}
    assert numeric_values(values, []) == {}
