"""temp-c: converts Fahrenheit readings to Celsius and flags hot ones.

Payload: a number of degrees Fahrenheit, or an object whose field "f" is one.
Values: {"c": <Celsius>, "hot": <c > THRESHOLD_C>, "v": HANDLER_VERSION}, with THRESHOLD_C (default 30) and
HANDLER_VERSION (default 1) from the environment. "v" names the release that made the value (temp-c-v2 sets 2),
so rollout tests can tell the releases apart in the aggregates.
Anything else raises ValueError, so the agent dead-letters the event with the reason.
"""

from __future__ import annotations

import math
import os
from typing import Any

from edge_handler import Event, run

THRESHOLD_C = float(os.environ.get("THRESHOLD_C", "30"))
# The release number in every result, so that a rollout shows in the aggregates (temp-c-v2 sets 2).
VERSION = int(os.environ.get("HANDLER_VERSION", "1"))


def fahrenheit(payload: Any) -> float:
    """The reading in degrees Fahrenheit, or ValueError saying why there is none."""
    value = payload.get("f") if isinstance(payload, dict) else payload
    # bool is an int subclass, but `true` is no temperature.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(
            f"expected a number of degrees Fahrenheit or an object with a numeric 'f', got {payload!r:.200}"
        )
    return float(value)


def handle(event: Event) -> dict[str, Any]:
    celsius = (fahrenheit(event.payload) - 32.0) * 5.0 / 9.0
    return {"c": celsius, "hot": celsius > THRESHOLD_C, "v": VERSION}


if __name__ == "__main__":
    run(handle)
