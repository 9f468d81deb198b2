"""The plan of a rollout: the canary, then batches from a count or a percentage of all devices (rounded up, at
least one), devices by id; and a device's gate when its soak saw too few events ("no data")."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edge_protocol.messages import HandlerReport, Reported
from hub.rollouts.plan import DeviceStatus, Limits, Observation, Progress, batch_size, gate, no_data, plan

DEVICES = [f"d{i:02d}" for i in range(10, 0, -1)]  # given out of order


@pytest.mark.parametrize(
    ("batch", "total", "size"),
    [
        ("25%", 10, 3),
        ("25%", 4, 1),
        ("10%", 30, 3),
        ("33.3%", 3, 1),
        ("1%", 5, 1),
        ("100%", 7, 7),
        ("2", 9, 2),
        (3, 9, 3),
    ],
)
def test_batch_sizes_round_up_and_are_at_least_one(batch: str | int, total: int, size: int) -> None:
    assert batch_size(batch, total) == size


@pytest.mark.parametrize("batch", ["0", 0, "0%", "150%", "lots", "-1", "25 percent"])
def test_bad_batches_say_how_to_write_one(batch: str | int) -> None:
    with pytest.raises(ValueError, match="batch"):
        batch_size(batch, 10)


def test_canary_then_batches_by_device_id() -> None:
    assert plan(DEVICES, 1, "25%") == [
        ["d01"],
        ["d02", "d03", "d04"],
        ["d05", "d06", "d07"],
        ["d08", "d09", "d10"],
    ]
    assert plan(DEVICES, 2, 5) == [["d01", "d02"], ["d03", "d04", "d05", "d06", "d07"], ["d08", "d09", "d10"]]
    assert plan(DEVICES[-3:], 0, "50%") == [["d01", "d02"], ["d03"]]
    assert plan(["only"], 3, "25%") == [["only"]]
    assert plan(["a", "b", "a"], 1, "100%") == [["a"], ["b"]]


# -- the gate: no data is not healthy ---------------------------------------------------------------------------

IMAGE = "127.0.0.1:5000/temp-c@sha256:" + "b" * 64
LIMITS = Limits(soak=30.0, health_timeout=120.0, max_error_rate=0.05, min_events=10)
T0 = 1_000.0


def soaking(processed: int = 0, errors: int = 0) -> Progress:
    """A device healthy on the new release since T0, its counters then at ``processed`` and ``errors``."""
    return Progress(
        "d1", 0, DeviceStatus.SOAKING, desired_version=3, assigned_at=T0 - 5, healthy_at=T0, soak_started_at=T0,
        soak_processed=processed, soak_errors=errors, soak_reports=0, soak_seen_at=T0,
    )  # fmt: skip


def seen(at: float, processed: int, errors: int = 0) -> Observation:
    handler = HandlerReport(name="temp-c", image=IMAGE, healthy=True, state="running", processed=processed,
                            errors=errors, lag_ms=10.0)  # fmt: skip
    return Observation(Reported(device="d1", applied_version=3, handlers=[handler], ts=at), received_at=at)


def test_a_soak_without_events_reads_no_data_not_passed() -> None:
    after = gate(soaking(100), seen(T0 + 31, 100), "temp-c", IMAGE, LIMITS, T0 + 31)
    assert after.status is DeviceStatus.SOAKING  # waiting: neither passed nor failed
    assert after.reason == "no data: 0 of 10 events needed (0 errors, 0 ok)"
    assert no_data(after.status, after.reason)
    few = gate(after, seen(T0 + 60, 109), "temp-c", IMAGE, LIMITS, T0 + 60)
    assert (few.status, few.reason) == (DeviceStatus.SOAKING, "no data: 9 of 10 events needed (0 errors, 9 ok)")


def test_no_data_until_the_deadline_fails_the_gate() -> None:
    p = gate(soaking(), seen(T0 + 31, 3, 1), "temp-c", IMAGE, LIMITS, T0 + 31)
    p = gate(p, seen(T0 + 31, 3, 1), "temp-c", IMAGE, LIMITS, T0 + 150)  # soak + health_timeout: not yet over
    assert p.status is DeviceStatus.SOAKING
    failed = gate(p, seen(T0 + 31, 3, 1), "temp-c", IMAGE, LIMITS, T0 + 151)
    assert failed.status is DeviceStatus.FAILED
    assert failed.reason == "no data: 4 of 10 events needed (1 errors, 3 ok) within 150s of becoming healthy"
    assert no_data(failed.status, failed.reason)


def test_events_arriving_late_in_the_extended_soak_pass_it() -> None:
    p = gate(soaking(), seen(T0 + 31, 0), "temp-c", IMAGE, LIMITS, T0 + 31)
    assert no_data(p.status, p.reason)
    passed = gate(p, seen(T0 + 100, 10), "temp-c", IMAGE, LIMITS, T0 + 100)
    assert passed.status is DeviceStatus.PASSED
    assert passed.reason == "error rate 0.0% (0 errors, 10 ok), max lag 10 ms"
    assert not no_data(passed.status, passed.reason)


def test_enough_events_are_judged_on_their_error_rate_and_min_events_0_judges_any_count() -> None:
    bad = gate(soaking(), seen(T0 + 31, 9, 1), "temp-c", IMAGE, LIMITS, T0 + 31)
    assert (bad.status, bad.reason) == (DeviceStatus.FAILED, "error rate 10.0% over the limit of 5.0% (1 errors, 9 ok)")
    anything = gate(soaking(), seen(T0 + 31, 0), "temp-c", IMAGE, replace(LIMITS, min_events=0), T0 + 31)
    assert anything.status is DeviceStatus.PASSED


def test_a_restarted_runtime_counts_its_events_from_zero() -> None:
    p = gate(soaking(500), seen(T0 + 31, 4), "temp-c", IMAGE, LIMITS, T0 + 31)  # counters went back: 4 events
    assert p.reason == "no data: 4 of 10 events needed (0 errors, 4 ok)"


def test_the_default_asks_for_a_few_events() -> None:
    assert 1 <= Limits().min_events <= 100
