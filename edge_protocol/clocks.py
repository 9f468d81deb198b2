"""Clocks for both sides: the wall clock (with a test-only offset hook) and a wall clock that does not jump.

Timers, timeouts and backoffs run on the monotonic clock (``time.monotonic`` or the event loop's clock). Some
times must be on the wall-clock scale because they are stored or compared with stored ones (window bounds, the
watermark, an outbox record's age, a rollout's deadlines), yet must not jump when the wall clock is stepped:
:class:`SteadyWallClock` gives them. It follows the wall clock's slow corrections (NTP slewing, small steps)
but not a jump: between two readings it advances by the monotonic clock, and when the wall clock moved by more
than that (beyond a threshold) the difference goes into its ``skew`` instead. A later correction of the jump
brings the skew back to zero, and the clock follows the wall clock exactly again.

Test hook: when ``EDGEFLEET_TEST_CLOCK_OFFSET_FILE`` names a file, :func:`wall_clock` adds the number of seconds
written in it (re-read whenever the file changes; replace it atomically). Off by default; it exists so that a
test can step a real agent's clock without root rights.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

OFFSET_FILE_ENV = "EDGEFLEET_TEST_CLOCK_OFFSET_FILE"

# A reading that differs from the monotonic clock's advance by more than this is a jump. The relative part
# leaves room for NTP slewing (at most 500 ppm) over a long gap between readings.
JUMP_THRESHOLD = 1.0
JUMP_THRESHOLD_RATE = 0.001


def steady_seconds() -> float:
    """Seconds on a clock that never jumps and, unlike ``CLOCK_MONOTONIC`` on Linux, also counts suspend."""
    return time.clock_gettime(_STEADY_ID)


_STEADY_ID = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class _OffsetFile:
    """The test hook's offset, re-read when the file's identity or size or modification time changes."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._offset = 0.0

    def __call__(self) -> float:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return time.time()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            try:
                with open(self._path) as f:
                    self._offset = float(f.read().strip() or 0.0)
                self._stamp = stamp
            except (OSError, ValueError):
                pass  # caught mid-write: keep the last offset, read again next time
        return time.time() + self._offset


def _make_wall_clock() -> Callable[[], float]:
    path = os.environ.get(OFFSET_FILE_ENV)
    if not path:
        return time.time
    log.warning("test hook: the wall clock is offset by the seconds in %s (%s)", path, OFFSET_FILE_ENV)
    return _OffsetFile(path)


wall_clock: Callable[[], float] = _make_wall_clock()
"""The wall clock, for timestamps that are data (on the wire, in a dead letter); time.time() unless hooked."""


class SteadyWallClock:
    """Wall-clock time that follows the wall clock's slow corrections but not its jumps; never goes back."""

    def __init__(
        self,
        wall: Callable[[], float] | None = None,
        steady: Callable[[], float] = steady_seconds,
        *,
        threshold: float = JUMP_THRESHOLD,
        name: str = "clock",
    ) -> None:
        self._wall = wall or wall_clock
        self._steady = steady
        self._threshold = threshold
        self._name = name
        self._lock = threading.Lock()
        self._skew = 0.0
        self._last: tuple[float, float] | None = None  # (wall, steady) of the last reading
        self._value = -float("inf")
        self.jumps = 0

    @property
    def skew(self) -> float:
        """How far the wall clock is from this clock: the jumps it did not follow (positive: wall ahead)."""
        return self._skew

    def now(self) -> float:
        wall, steady = self._wall(), self._steady()
        with self._lock:
            if self._last is not None:
                last_wall, last_steady = self._last
                elapsed = steady - last_steady
                jump = (wall - last_wall) - elapsed
                if abs(jump) > self._threshold + JUMP_THRESHOLD_RATE * max(elapsed, 0.0):
                    self._skew += jump
                    self.jumps += 1
                    log.warning(
                        "%s: the wall clock jumped by %+.3f s; timers and watermarks keep to the monotonic "
                        "clock (the wall clock is now %+.3f s from it)",
                        self._name,
                        jump,
                        self._skew,
                    )
            self._last = (wall, steady)
            self._value = max(self._value, wall - self._skew)
            return self._value

    def not_before(self, floor: float) -> None:
        """Go on from ``floor`` if it is ahead: a time this clock reached in an earlier run (a checkpointed
        watermark) when the wall clock is now behind it. The difference joins the skew."""
        now = self.now()
        if floor > now:
            with self._lock:
                self._skew -= floor - now
                self._value = max(self._value, floor)
            log.warning(
                "%s: the wall clock is %.3f s behind where the last run left off; going on from there",
                self._name,
                floor - now,
            )


STEADY_WALL = SteadyWallClock(name="steady wall clock")
"""The process's one steady wall clock. Agent: arrival times, watermarks, outbox and image ages. Hub: rollout
deadlines and soak times, and when reported states arrived."""
