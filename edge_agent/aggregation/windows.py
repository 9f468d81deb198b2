"""Tumbling, hopping and session windows over handler results, closed by a watermark.

The watermark is ``now - lateness``, ``now`` read from the agent's steady wall clock
(:class:`edge_protocol.clocks.SteadyWallClock`: wall-clock time that advances by the monotonic clock and does not
follow a jump of the wall clock), so a step of the device's clock neither closes windows early nor makes fresh
events late. A window closes once its end is behind the watermark, so an idle stream still closes its windows.
An event is *late* when the window it belongs to was already closed (emitted) -- judged against the watermark of
the last close, which is checkpointed, so that a closed window is never opened again under the same id. Late
events are dead-lettered, never dropped in silence. Open windows are checkpointed with every commit (see
:mod:`edge_agent.outbox`), so they survive a restart instead of being flushed early.

A subscription retired, replaced or orphaned emits its open windows at once (:meth:`WindowSet.seal`) and keeps a
checkpoint of no windows with how far it emitted (``sealed_to``, the latest end of a window it emitted): the same
revision back later (a rollback A -> B -> A, a reverted version tried again, a trial flushed at a restart and
re-applied) finds it and treats an event for a window at or before that mark as late, instead of emitting a
second window under an id the hub already holds (which it refuses as a ``conflict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edge_protocol.aggregate import FieldAccumulator, WindowResult, window_id
from edge_protocol.specs import SubscriptionSpec, quantile_of


@dataclass(slots=True)
class OpenWindow:
    start: float
    end: float
    events: int = 0
    fields: dict[str, FieldAccumulator] = field(default_factory=dict)
    sketches: bool = False

    def add(self, values: dict[str, float], ts: float) -> None:
        self.events += 1
        for name, value in values.items():
            acc = self.fields.get(name)
            if acc is None:
                acc = self.fields[name] = FieldAccumulator(self.sketches)
            acc.add(value, ts)


# Beyond this magnitude sums and squared deviations of a window could overflow to infinity, which the wire
# contract refuses (JSON has no inf): such values are not aggregated.
MAX_MAGNITUDE = 1e150


def numeric_values(values: dict[str, Any], only: list[str] | None) -> dict[str, float]:
    """The aggregatable values of one result: numbers, booleans as 0/1; NaN, infinities and magnitudes
    beyond ``MAX_MAGNITUDE`` are skipped."""
    out: dict[str, float] = {}
    # The range check also rejects NaN (every comparison with it is false) and the infinities.
    if only is None:
        for name, v in values.items():
            if isinstance(v, (int, float)) and -MAX_MAGNITUDE <= v <= MAX_MAGNITUDE:
                out[name] = float(v)
        return out
    for name in only:
        v = values.get(name)
        if isinstance(v, (int, float)) and -MAX_MAGNITUDE <= v <= MAX_MAGNITUDE:
            out[name] = float(v)
    return out


def _windows_per_event(size: float, hop: float) -> int:
    """``size / hop`` when it is a whole number (1.0 / 0.1 is, although neither is exact in binary), else 0."""
    ratio = size / hop
    whole = round(ratio)
    return whole if whole >= 1 and abs(ratio - whole) <= 1e-9 * whole else 0


class WindowSet:
    """The open windows of one subscription, per group."""

    def __init__(self, spec: SubscriptionSpec, device_id: str, part: int = 0) -> None:
        """``part``: which intake worker's share of the subscription these windows hold (0 with one worker)."""
        self.spec = spec
        self._device = device_id
        self._part = part
        self._revision = spec.revision
        self._window = spec.window
        self._lateness = spec.lateness
        self._open: dict[tuple[str, float], OpenWindow] = {}
        self._sessions: dict[str, list[OpenWindow]] = {}
        self._closed_to = -math.inf
        self._sealed_to = -math.inf
        """Windows ending at or before this were emitted early by a :meth:`seal`; they never open again."""
        self._sketches = any(quantile_of(stat) is not None for stat in spec.stats)
        self._hop = spec.window.hop if spec.window.kind == "hopping" and spec.window.hop else spec.window.size
        self._per_event = _windows_per_event(spec.window.size, self._hop)
        """How many windows hold each event when the size is a whole multiple of the hop, else 0."""
        self.late = 0

    def __len__(self) -> int:
        return len(self._open) + sum(len(s) for s in self._sessions.values())

    def add(self, group: str, values: dict[str, float], ts: float) -> bool:
        """Add one result at event time ``ts``; False when it is late (its window already closed)."""
        watermark = max(self._closed_to, self._sealed_to)
        win = self._window
        if win.kind == "session":
            return self._add_session(group, values, ts, watermark)
        if win.kind == "tumbling":
            # The one window an event belongs to, without the hopping loop below (the agent's hot path): the same
            # start, computed the same way, as that loop's first step.
            size = win.size
            start = math.floor(ts / size) * size
            if start + size <= watermark:
                self.late += 1
                return False
            key = (group, start)
            w = self._open.get(key)
            if w is None:
                w = self._open[key] = OpenWindow(start, start + size, sketches=self._sketches)
            w.add(values, ts)
            return True
        hop = self._hop
        # Starts are whole multiples of the hop, computed from an integer: repeated subtraction would give one
        # window two float starts (0.6 and 0.5999999999999999), i.e. two ids.
        k = math.floor(ts / hop)
        whole = self._per_event
        added = False
        for j in range(whole or math.ceil(win.size / hop) + 1):
            start = (k - j) * hop
            end = start + win.size
            # With a size that is a whole multiple of the hop, an event is in exactly that many windows, counted
            # by index: comparing it with rounded bounds could put it in one window more or one less.
            if not whole and end <= ts:
                break
            if end > watermark:
                key = (group, start)
                w = self._open.get(key)
                if w is None:
                    w = self._open[key] = OpenWindow(start, end, sketches=self._sketches)
                w.add(values, ts)
                added = True
        if not added:
            self.late += 1
        return added

    def _add_session(self, group: str, values: dict[str, float], ts: float, watermark: float) -> bool:
        """An event joins every open session of its group that it is less than ``gap`` from (merging them, as
        an out-of-order event can bridge two); otherwise it starts one. A session ends once ``gap`` passes
        after its last event, so an event exactly ``gap`` after it starts the next."""
        gap = self._window.gap or 0.0
        sessions = self._sessions.setdefault(group, [])
        joined = [w for w in sessions if w.start - gap < ts < w.end + gap]
        if max([ts] + [w.end for w in joined]) + gap <= watermark:
            self.late += 1
            return False
        if joined:
            w = joined[0]
            for other in joined[1:]:
                _merge_into(w, other)
                sessions.remove(other)
        else:
            w = OpenWindow(ts, ts, sketches=self._sketches)
            sessions.append(w)
        w.start = min(w.start, ts)
        w.end = max(w.end, ts)
        w.add(values, ts)
        return True

    def close_due(self, now: float) -> list[WindowResult]:
        """Results of every window the watermark has passed, oldest first."""
        watermark = now - self._lateness
        self._closed_to = max(self._closed_to, watermark)
        closed: list[tuple[str, OpenWindow]] = []
        if self._open:
            due = [k for k, w in self._open.items() if w.end <= watermark]
            closed.extend((k[0], self._open.pop(k)) for k in due)
        if self._window.kind == "session":
            gap = self._window.gap or 0.0
            for group, sessions in list(self._sessions.items()):
                closed.extend((group, w) for w in sessions if w.end + gap <= watermark)
                sessions[:] = [w for w in sessions if w.end + gap > watermark]
                if not sessions:
                    del self._sessions[group]
        closed.sort(key=lambda gw: (gw[1].start, gw[0]))
        return [self._result(group, w) for group, w in closed]

    def seal(self) -> list[WindowResult]:
        """Emit every open window now (the subscription is retired, replaced or orphaned), oldest first, and
        raise the sealed mark to the latest end emitted. The watermark of the last close stays what the clock
        made it: it anchors arrival times after a restart (``resumes_at``), and a window emitted early may end
        after now."""
        closed_to = self._closed_to
        results = self.close_due(math.inf)
        self._closed_to = closed_to
        self._sealed_to = max([self._sealed_to, *(r.window_end for r in results)])
        return results

    def resumes_at(self) -> float | None:
        """Where the restored checkpoint's watermark was (``closed_to + lateness``), None without one: the clock
        that stamps arrival times must not restart behind it, or windows closed then would open again."""
        return self._closed_to + self._lateness if math.isfinite(self._closed_to) else None

    def next_close(self) -> float | None:
        """Time (on the watermark's clock) at which the next window closes, or None when nothing is open."""
        ends = [w.end for w in self._open.values()]
        if self._window.kind == "session":
            gap = self._window.gap or 0.0
            ends += [w.end + gap for sessions in self._sessions.values() for w in sessions]
        return min(ends) + self._lateness if ends else None

    def _result(self, group: str, w: OpenWindow) -> WindowResult:
        end = w.end + (self._window.gap or 0.0) if self._window.kind == "session" else w.end
        return WindowResult(
            id=window_id(self._device, self.spec.name, self._revision, group, w.start, self._part),
            subscription=self.spec.name,
            revision=self._revision,
            group=group,
            window_start=w.start,
            window_end=end,
            part=self._part,
            events=w.events,
            fields={name: acc.freeze() for name, acc in w.fields.items()},
            stats=list(self.spec.stats),
        )

    # -- checkpoints ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-able state of every open window, tagged with the subscription's revision."""

        def dump(group: str, w: OpenWindow) -> dict[str, Any]:
            return {
                "group": group,
                "start": w.start,
                "end": w.end,
                "events": w.events,
                "fields": {n: a.dump() for n, a in w.fields.items()},
            }

        return {
            "revision": self._revision,
            "closed_to": self._closed_to if math.isfinite(self._closed_to) else None,
            "sealed_to": self._sealed_to if math.isfinite(self._sealed_to) else None,
            "windows": [dump(g, w) for (g, _), w in self._open.items()],
            "sessions": [dump(g, w) for g, sessions in self._sessions.items() for w in sessions],
        }

    def restore(self, snapshot: dict[str, Any]) -> bool:
        """Reopen checkpointed windows; False (and nothing restored) when the subscription changed since."""
        if snapshot.get("revision") != self._revision:
            return False
        if snapshot.get("closed_to") is not None:
            self._closed_to = float(snapshot["closed_to"])
        if snapshot.get("sealed_to") is not None:
            self._sealed_to = float(snapshot["sealed_to"])

        def load(item: dict[str, Any]) -> OpenWindow:
            w = OpenWindow(float(item["start"]), float(item["end"]), int(item["events"]), sketches=self._sketches)
            for name, state in item["fields"].items():
                w.fields[name] = FieldAccumulator.load(state)
            return w

        for item in snapshot.get("windows", []):
            self._open[(item["group"], float(item["start"]))] = load(item)
        for item in snapshot.get("sessions", []):
            self._sessions.setdefault(item["group"], []).append(load(item))
        # Checkpoints from before several sessions per group kept ended ones apart.
        for item in snapshot.get("ended", []):
            self._sessions.setdefault(item["group"], []).append(load(item))
        return True


def _merge_into(w: OpenWindow, other: OpenWindow) -> None:
    """Fold ``other`` into ``w`` (an out-of-order event bridged two sessions)."""
    w.start = min(w.start, other.start)
    w.end = max(w.end, other.end)
    w.events += other.events
    for name, acc in other.fields.items():
        mine = w.fields.get(name)
        w.fields[name] = acc if mine is None else FieldAccumulator.thaw(mine.freeze().merge(acc.freeze()))
