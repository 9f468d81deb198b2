"""The one reconnect backoff: jitter within [d/2, d], a cap, and a reset only after a connection that lasted."""

from __future__ import annotations

import pytest

from mqtt_session.backoff import Backoff, retry_delay


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("attempt", [0, 1, 3, 6])
def test_the_delay_is_jittered_within_half_to_all_of_the_exponential(attempt: int) -> None:
    full = 0.5 * 2**attempt
    delays = [retry_delay(attempt, cap=1000.0) for _ in range(500)]
    assert all(full / 2 <= d <= full for d in delays)
    assert max(delays) - min(delays) > full / 10  # jittered, not a constant


def test_the_delay_never_exceeds_the_cap() -> None:
    assert all(2.5 <= retry_delay(attempt, cap=5.0) <= 5.0 for attempt in (10, 100, 10_000))


def test_each_failure_doubles_the_delay_up_to_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=8.0)
    bounds = [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0), (4.0, 8.0)]
    for low, high in bounds:
        assert low <= backoff.next_delay() <= high


def test_a_connection_that_lasted_starts_the_delays_over() -> None:
    clock = Clock()
    backoff = Backoff(base=1.0, cap=64.0, stable_after=5.0, clock=clock)
    for _ in range(4):
        backoff.next_delay()
    backoff.connected()
    clock.now += 5.0
    assert backoff.next_delay() <= 1.0


def test_a_connection_dropped_at_once_keeps_the_delays_growing() -> None:
    clock = Clock()
    backoff = Backoff(base=1.0, cap=64.0, stable_after=5.0, clock=clock)
    for _ in range(4):
        backoff.next_delay()
    backoff.connected()
    clock.now += 1.0
    assert backoff.next_delay() >= 8.0
    clock.now += 10.0  # a later failed attempt is not judged by the old connection
    assert backoff.next_delay() >= 16.0


def test_reset_starts_over() -> None:
    backoff = Backoff(base=1.0, cap=64.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0
