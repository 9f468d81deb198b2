"""What the accuracy tests share (test_aggregation_accuracy.py, test_window_accuracy.py): the subscription they
aggregate with, every statistic it can ask for, and a time far enough ahead to close every window."""

from __future__ import annotations

from typing import Any

from edge_protocol.specs import SubscriptionSpec

FAR = 1e12
"""A watermark beyond every window's end: ``close_due(FAR)`` closes them all."""
QUANTILES = ["p50", "p90", "p95", "p99", "p37.5"]
ALL_STATS = ["count", "sum", "min", "max", "mean", "stddev", "first", "last", *QUANTILES]


def spec(window: dict[str, Any], stats: list[str] | None = None, **kw: Any) -> SubscriptionSpec:
    """Subscription ``acc`` on ``sensors/#`` over field ``v`` with ``window``; every statistic unless ``stats``."""
    return SubscriptionSpec(
        name="acc", topic="sensors/#", handler="h", window=window, stats=stats or ALL_STATS, fields=["v"], **kw
    )
