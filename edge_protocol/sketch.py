"""Mergeable quantile sketch state (DDSketch's logarithmic mapping, 1% relative accuracy).

The bins are sparse maps key -> count for positive and negative values plus a zero count, so merging two
sketches is adding their bins, and a quantile of merged sketches is within 1% (relative) of the exact
quantile of all values together: the hub computes fleet-wide p99s from these, never by averaging p99s.
The key/value mapping is ddsketch's own ``LogarithmicMapping``; the rank walk follows ``DDSketch``'s.
"""

from __future__ import annotations

from collections import Counter

from ddsketch.mapping import LogarithmicMapping
from pydantic import Field

from edge_protocol.base import WireModel

RELATIVE_ACCURACY = 0.01
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)


class SketchState(WireModel):
    """Sparse DDSketch bins; JSON object keys are the bin keys as strings."""

    accuracy: float = RELATIVE_ACCURACY
    pos: dict[int, int] = Field(default_factory=dict)
    neg: dict[int, int] = Field(default_factory=dict)
    zero: int = Field(default=0, ge=0)

    @property
    def count(self) -> int:
        return sum(self.pos.values()) + sum(self.neg.values()) + self.zero

    def merge(self, other: SketchState) -> SketchState:
        if other.accuracy != self.accuracy:
            raise ValueError(f"cannot merge sketches of accuracy {self.accuracy} and {other.accuracy}")
        pos, neg = Counter(self.pos), Counter(self.neg)
        pos.update(other.pos)
        neg.update(other.neg)
        return SketchState(accuracy=self.accuracy, pos=dict(pos), neg=dict(neg), zero=self.zero + other.zero)

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0..1), within the relative accuracy; None when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile {q} outside [0, 1]")
        mapping = _MAPPING if self.accuracy == RELATIVE_ACCURACY else LogarithmicMapping(self.accuracy)
        neg_count = sum(self.neg.values())
        total = neg_count + self.zero + sum(self.pos.values())
        if total == 0:
            return None
        rank = q * (total - 1)
        if rank < neg_count:
            # Negative values: the largest magnitude is the smallest value, so walk keys from the top.
            reversed_rank = neg_count - rank - 1
            running = 0
            for key in sorted(self.neg):
                running += self.neg[key]
                if running >= reversed_rank + 1:
                    return -float(mapping.value(key))
            return -float(mapping.value(max(self.neg)))
        if rank < neg_count + self.zero:
            return 0.0
        rank -= neg_count + self.zero
        running = 0
        for key in sorted(self.pos):
            running += self.pos[key]
            if running > rank:
                return float(mapping.value(key))
        return float(mapping.value(max(self.pos)))


class SketchAccumulator:
    """Mutable counterpart for the agent's hot path."""

    __slots__ = ("neg", "pos", "zero")

    def __init__(self) -> None:
        self.pos: dict[int, int] = {}
        self.neg: dict[int, int] = {}
        self.zero = 0

    def add(self, value: float) -> None:
        if value > _MAPPING.min_possible:
            key = _MAPPING.key(value)
            self.pos[key] = self.pos.get(key, 0) + 1
        elif value < -_MAPPING.min_possible:
            key = _MAPPING.key(-value)
            self.neg[key] = self.neg.get(key, 0) + 1
        else:
            self.zero += 1

    def freeze(self) -> SketchState:
        return SketchState(pos=dict(self.pos), neg=dict(self.neg), zero=self.zero)

    @classmethod
    def thaw(cls, state: SketchState) -> SketchAccumulator:
        acc = cls()
        acc.pos, acc.neg, acc.zero = dict(state.pos), dict(state.neg), state.zero
        return acc
