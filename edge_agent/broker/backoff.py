"""How long the agent's MQTT clients wait before they try to connect again."""

from __future__ import annotations

import random


def retry_delay(attempt: int, cap: float) -> float:
    """Capped exponential backoff with jitter: a delay in [d/2, d], d = min(cap, 0.5 s x 2**attempt).

    The jitter spreads the reconnections of many clients after one broker restarts."""
    return min(cap, 0.5 * 2.0**attempt) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
