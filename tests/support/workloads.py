"""The temperature workload of the fault and integration tests: readings, the sentinel that closes them, temp-c."""

from __future__ import annotations

import json
import random
from typing import Any

SENTINEL_GROUP = "topic[2]=end"


def temperature_events(
    prefix: str, n: int, *, seed: int, sensors: int = 4
) -> tuple[list[tuple[str, bytes]], list[float]]:
    """``n`` readings {"f": F} on ``{prefix}/sensors/sN/temperature``, and the Celsius value temp-c makes of each."""
    rng = random.Random(seed)
    messages, celsius = [], []
    for i in range(n):
        f = round(rng.uniform(-40.0, 120.0), 3)
        messages.append((f"{prefix}/sensors/s{i % sensors}/temperature", json.dumps({"f": f}).encode()))
        celsius.append((f - 32.0) * 5.0 / 9.0)
    return messages, celsius


def sentinel_event(prefix: str) -> tuple[str, bytes]:
    """One reading in a group of its own (``topic[2]=end``), published after everything else.

    A dispatcher takes events in order and closes every window whose end the watermark passed in one commit, so
    once the sentinel's window is stored every earlier event's window is at least in the outbox.
    """
    return f"{prefix}/sensors/end/temperature", b'{"f": 32.0}'


def temps_subscription(prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "temps",
        "topic": f"{prefix}/sensors/+/temperature",
        "handler": "temp-c",
        "window": {"size": "1s"},
        "stats": ["count", "sum", "min", "max", "mean"],
        "group_by": ["topic[2]"],
        **extra,
    }


TEMP_C = {"name": "temp-c", "image": "edgefleet/temp-c:dev"}
