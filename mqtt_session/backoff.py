"""How long a client waits before it tries to connect again: the one backoff of every MQTT client here."""

from __future__ import annotations

import random
import time
from collections.abc import Callable


def retry_delay(attempt: int, cap: float, base: float = 0.5) -> float:
    """Capped exponential backoff with jitter: a delay in [d/2, d], d = min(cap, base x 2**attempt).

    The jitter spreads the reconnections of many clients after one broker restarts."""
    delay = min(cap, base * 2.0 ** min(attempt, 64))  # the exponent's bound keeps the float finite
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography


class Backoff:
    """:func:`retry_delay` with its attempt counter, which starts over only after a connection that lasted.

    A broker that accepts a connection and drops it at once (a client id taken over, a refused subscription)
    must not be hammered as fast as a broker that was down once: the counter is reset by
    :meth:`next_delay` when the last :meth:`connected` is at least ``stable_after`` seconds old."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        *,
        stable_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.cap = cap
        self.stable_after = stable_after
        self.attempt = 0
        self._clock = clock
        self._connected_at: float | None = None

    def connected(self) -> None:
        """A connection is up; whether it lasted is judged when it ends (the next :meth:`next_delay`)."""
        self._connected_at = self._clock()

    def next_delay(self) -> float:
        """The wait before the next attempt, after a failed attempt or a lost connection."""
        if self._connected_at is not None and self._clock() - self._connected_at >= self.stable_after:
            self.attempt = 0
        self._connected_at = None
        delay = retry_delay(self.attempt, self.cap, self.base)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
        self._connected_at = None
