"""Issue 6's accuracy tests of the windows, on randomized data (hypothesis): out-of-order and late events
(WindowSet and Dispatcher) against a brute-force reference, session gaps, hopping overlaps. The statistics
inside a window are in test_aggregation_accuracy.py.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import defaultdict
from collections.abc import Awaitable
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.aggregation.windows import WindowSet
from edge_agent.broker import Incoming
from edge_agent.dispatcher import Dispatcher
from edge_agent.outbox import Outbox
from edge_agent.runtime.base import FunctionRuntime
from edge_protocol.aggregate import WindowResult
from edge_protocol.deadletter import DeadLetter
from tests.unit.agent.accuracy import FAR, spec

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
