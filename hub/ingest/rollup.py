"""Roll-ups of stored windows: across devices, into coarser tumbling buckets, or both.

Windows merge through their mergeable state (:meth:`FieldState.merge`: exact count/sum/min/max, Chan's update for
mean and M2, added sketch bins), never by averaging finished figures, so a roll-up's stddev and quantiles are
those of the pooled values (quantiles within the sketch's relative accuracy). A window without a sketch leaves
its merged quantiles at None rather than pretending.

Refused, with a reason: hopping windows (they overlap, so merging would count events twice), buckets that are
not a multiple of the windows' size or that a window would straddle (session windows), and windows of
different sizes under one start.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge_protocol.aggregate import FieldState
from hub.ingest.aggregates import StoredAggregate

ROLLUP_KINDS = ("devices",)
_EPSILON = 1e-9
HOPPING_REASON = "hopping windows overlap; a roll-up would count events twice"


class RollupError(ValueError):
    """A roll-up that would give a wrong answer; the message is the reason, for a 422."""


@dataclass(frozen=True, slots=True)
class RolledUp:
    """One stored window, or several merged; ``devices`` counts the distinct devices merged."""

    aggregate: StoredAggregate
    devices: int = 1


@dataclass(slots=True)
class _Bucket:
    rows: list[StoredAggregate] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0


def rollup(rows: Sequence[StoredAggregate], *, across_devices: bool, every: float | None) -> list[RolledUp]:
    """Merge ``rows`` per subscription, group and window start (or bucket of ``every`` seconds), and per device
    unless ``across_devices``; newest first. Without either option, each row is returned as it is."""
    if not across_devices and every is None:
        return [RolledUp(row) for row in rows]
    if every is not None and not (math.isfinite(every) and every > 0):
        raise RollupError(f"every must be a positive duration, not {every}")
    check_not_hopping(rows)
    buckets: dict[tuple[str, str, str, float], _Bucket] = defaultdict(_Bucket)
    for row in rows:
        size = row.window_end - row.window_start
        if every is None:
            start, end = row.window_start, row.window_end
        else:
            _check_multiple(every, size)
            start = math.floor(row.window_start / every + _EPSILON) * every
            end = start + every
            if row.window_end > end + _EPSILON * every:
                raise RollupError(
                    f"a window [{row.window_start}, {row.window_end}) straddles the {every:g} s buckets "
                    f"at {end}: every must be a multiple of the windows' size and aligned with them"
                )
        device = "*" if across_devices else row.device
        bucket = buckets[(device, row.subscription, row.group, start)]
        if every is None and bucket.rows and bucket.end != end:
            raise RollupError(
                f"windows of different sizes start at {start} in {row.subscription!r}: roll them up with every="
            )
        bucket.rows.append(row)
        bucket.start, bucket.end = start, end
    merged = [_merge(key[0], bucket) for key, bucket in buckets.items()]
    merged.sort(key=lambda r: (-r.aggregate.window_start, r.aggregate.window_id))
    return merged


def check_not_hopping(rows: Sequence[StoredAggregate]) -> None:
    """RollupError when windows of one device, subscription revision and group overlap (hopping windows)."""
    series: dict[tuple[str, str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        series[(row.device, row.subscription, row.revision, row.group)].append((row.window_start, row.window_end))
    for spans in series.values():
        spans.sort()
        for (start, end), (next_start, _) in itertools.pairwise(spans):
            # A window longer than the spacing to the next start: the hop is shorter than the size.
            if next_start < end - _EPSILON * max(1.0, end - start):
                raise RollupError(HOPPING_REASON)


def _check_multiple(every: float, size: float) -> None:
    if size <= 0:
        raise RollupError(f"a window of size {size} s cannot be rolled up")
    ratio = every / size
    if round(ratio) < 1 or abs(ratio - round(ratio)) > _EPSILON * max(1.0, ratio):
        raise RollupError(f"every={every:g}s is not a multiple of the windows' size ({size:g}s)")


def _merge(device: str, bucket: _Bucket) -> RolledUp:
    rows = sorted(bucket.rows, key=lambda r: (r.window_start, r.device, r.window_id))
    fields: dict[str, FieldState] = {}
    for row in rows:
        for name, state in row.fields.items():
            fields[name] = fields[name].merge(state) if name in fields else state
    stats: list[str] = []
    for row in rows:
        stats.extend(stat for stat in row.stats if stat not in stats)
    revisions = sorted({row.revision for row in rows})
    devices = sorted({row.device for row in rows})
    first = rows[0]
    shown_device = devices[0] if len(devices) == 1 else device
    revision = ",".join(revisions)
    aggregate = StoredAggregate(
        window_id=f"{shown_device}/{first.subscription}@{revision}/{first.group}/{bucket.start:.3f}/rollup",
        device=shown_device,
        subscription=first.subscription,
        revision=revision,
        group=first.group,
        window_start=bucket.start,
        window_end=bucket.end,
        part=0,
        events=sum(row.events for row in rows),
        fields=fields,
        stats=stats,
        stored_at=max(row.stored_at for row in rows),
        parts=sum(row.parts for row in rows),
    )
    return RolledUp(aggregate, devices=len(devices))
