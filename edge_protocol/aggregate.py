"""Mergeable aggregate state: what a window result carries so the hub can combine windows and devices.

A field's state keeps count, sum, mean and M2 (the sum of squared deviations from the mean), min, max, and the
first/last values with their times. Two states merge exactly (Chan et al.'s parallel update), so a roll-up of
many windows or devices gives the same count/sum/min/max and the same population stddev as one pass over all
values, up to floating-point rounding.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ConfigDict, Field

from edge_protocol.base import WireModel
from edge_protocol.sketch import SketchAccumulator, SketchState
from edge_protocol.specs import quantile_of


class FieldState(WireModel):
    """Running statistics of one numeric field inside one window (at least one value; all finite)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    count: int = Field(ge=1, le=2**63 - 1)
    sum: float
    mean: float
    m2: float = Field(ge=0, description="sum of squared deviations from the mean")
    min: float
    max: float
    first: float
    first_ts: float
    last: float
    last_ts: float
    sketch: SketchState | None = Field(default=None, description="quantile bins, when quantiles were asked for")

    @property
    def variance(self) -> float:
        """Population variance (divides by n, not n - 1)."""
        return self.m2 / self.count if self.count else 0.0

    @property
    def stddev(self) -> float:
        """Population standard deviation."""
        return math.sqrt(self.variance)

    def merge(self, other: FieldState) -> FieldState:
        """The state of both windows' values together."""
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        first_self = self.first_ts <= other.first_ts
        last_other = other.last_ts >= self.last_ts
        return FieldState(
            count=n,
            sum=self.sum + other.sum,
            mean=mean,
            m2=max(m2, 0.0),
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            first=self.first if first_self else other.first,
            first_ts=self.first_ts if first_self else other.first_ts,
            last=other.last if last_other else self.last,
            last_ts=other.last_ts if last_other else self.last_ts,
            sketch=_merge_sketches(self.sketch, other.sketch),
        )

    def statistic(self, name: str) -> float | None:
        """One named statistic: ``count``, ``sum``, ``min``, ``max``, ``mean``, ``stddev``, ``first``, ``last``
        or a quantile such as ``p99`` (from the sketch; None without one)."""
        q = quantile_of(name)
        if q is not None:
            return self.sketch.quantile(q) if self.sketch is not None else None
        if name == "stddev":
            return self.stddev
        if name in ("count", "sum", "min", "max", "mean", "first", "last"):
            return float(getattr(self, name))
        return None


def _merge_sketches(a: SketchState | None, b: SketchState | None) -> SketchState | None:
    if a is None or b is None:
        # A window without a sketch cannot contribute to quantiles: the result must not pretend it does.
        return None
    return a.merge(b)


class FieldAccumulator:
    """Mutable, allocation-free counterpart of :class:`FieldState` for the agent's hot path (Welford)."""

    __slots__ = ("count", "first", "first_ts", "last", "last_ts", "m2", "max", "mean", "min", "sketch", "sum")

    def __init__(self, with_sketch: bool = False) -> None:
        self.sketch = SketchAccumulator() if with_sketch else None
        self.count = 0
        self.sum = 0.0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.first = 0.0
        self.first_ts = math.inf
        self.last = 0.0
        self.last_ts = -math.inf

    def add(self, value: float, ts: float) -> None:
        count = self.count + 1
        self.count = count
        self.sum += value
        mean = self.mean
        delta = value - mean
        mean += delta / count
        self.mean = mean
        self.m2 += delta * (value - mean)
        # Comparisons, not min()/max(): a third of this method's time (values are finite here).
        if value < self.min:  # noqa: PLR1730
            self.min = value
        if value > self.max:  # noqa: PLR1730
            self.max = value
        if ts < self.first_ts:
            self.first, self.first_ts = value, ts
        if ts >= self.last_ts:
            self.last, self.last_ts = value, ts
        if self.sketch is not None:
            self.sketch.add(value)

    def dump(self) -> dict[str, Any]:
        """The state as plain JSON-able data, for checkpoints (no model construction on the hot path)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _SCALARS}
        if self.sketch is not None:
            # JSON object keys are strings (orjson refuses int keys); load() turns them back into ints.
            sketch = self.sketch
            out["sketch"] = {
                "pos": {str(k): v for k, v in sketch.pos.items()},
                "neg": {str(k): v for k, v in sketch.neg.items()},
                "zero": sketch.zero,
            }
        return out

    @classmethod
    def load(cls, data: dict[str, Any]) -> FieldAccumulator:
        """Inverse of :meth:`dump`."""
        acc = cls()
        for name in _SCALARS:
            setattr(acc, name, data[name])
        sketch = data.get("sketch")
        if sketch is not None:
            acc.sketch = SketchAccumulator()
            acc.sketch.pos = {int(k): v for k, v in sketch["pos"].items()}
            acc.sketch.neg = {int(k): v for k, v in sketch["neg"].items()}
            acc.sketch.zero = sketch["zero"]
        return acc

    def freeze(self) -> FieldState:
        return FieldState(
            count=self.count,
            sum=self.sum,
            mean=self.mean,
            m2=max(self.m2, 0.0),
            min=self.min,
            max=self.max,
            first=self.first,
            first_ts=self.first_ts,
            last=self.last,
            last_ts=self.last_ts,
            sketch=self.sketch.freeze() if self.sketch is not None else None,
        )

    @classmethod
    def thaw(cls, state: FieldState) -> FieldAccumulator:
        acc = cls()
        for name in cls.__slots__:
            if name != "sketch":
                setattr(acc, name, getattr(state, name))
        acc.sketch = SketchAccumulator.thaw(state.sketch) if state.sketch is not None else None
        return acc


_SCALARS = ("count", "sum", "mean", "m2", "min", "max", "first", "first_ts", "last", "last_ts")


def window_id(
    device: str, subscription: str, revision: str, group: str, window_start: float, part: int = 0
) -> str:
    """Stable identity of one window result; the hub stores each id once."""
    return f"{device}/{subscription}@{revision}/{group}/{window_start:.3f}/{part}"


class WindowResult(WireModel):
    """One closed window of one subscription and group on one device."""

    id: str
    subscription: str
    revision: str
    group: str = ""
    window_start: float
    window_end: float
    part: int = Field(default=0, ge=0, le=2**31)
    events: int = Field(ge=0, le=2**63 - 1, description="handler results that fell in this window")
    fields: dict[str, FieldState] = Field(default_factory=dict)
    stats: list[str] = Field(default_factory=list, description="statistics the subscription asked for")
