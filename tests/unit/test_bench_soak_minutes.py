"""The soak's per-minute machine context: the calibration loop's median and the agent's CPU per minute, and the
report line that puts the minutes over 10 ms beside them."""

from __future__ import annotations

import os

from bench.procs import MachineSampler
from bench.report import soak_rows


def test_each_interval_gets_its_own_median_calibration_and_cores() -> None:
    sampler = MachineSampler(os.getpid())
    # Minute 0: 4,000 µs, 0.5 cores; minute 1: 6,000 µs, 0.8 cores; minute 2: one sample only.
    sampler.samples = [(100.0 + t, 4000.0 + (t % 2), 10.0 + 0.5 * t) for t in range(0, 60, 5)]
    sampler.samples += [(160.0 + t, 6000.0, 50.0 + 0.8 * t) for t in range(0, 60, 5)]
    sampler.samples += [(225.0, 9000.0, 99.0)]
    first, second, third = sampler.per_interval(100.0, 60.0, 3)
    assert first["calibration_us"] in (4000, 4001)
    assert first["agent_cores"] == 0.5
    assert second == {"calibration_us": 6000, "agent_cores": 0.8}
    assert third == {}


def test_the_report_names_each_slow_minute_with_the_machine_speed_then() -> None:
    minutes = [
        {"index": i, "count": 300_000, "p50_ms": 1.0, "p99_ms": 5.0, "max_ms": 9.0, "calibration_us": 4000,
         "agent_cores": 0.6}
        for i in range(5)
    ]  # fmt: skip
    minutes[3].update(p99_ms=14.2, calibration_us=6000, agent_cores=0.71)
    soak = {
        "seconds": 300.0, "rate": 5000, "per_minute": minutes, "worst_p99_ms": 14.2, "minutes_over_10ms": 1,
        "growth_pct": 0.0, "rss_1min_mib": 70.0, "rss_end_mib": 70.0, "sent": 1_500_000, "processed": 1_500_000,
        "achieved_rate": 5000.0, "broker_dropped": 0, "publisher_unacked": 0, "unprocessed": 0,
    }  # fmt: skip
    row = soak_rows(soak)[0]
    assert row.ok is False
    assert "median calibration 4,000 µs" in row.ratio
    assert "minute 4: 14.2 ms, fixed work at 1.50x its median CPU, agent 0.71 cores" in row.ratio
    assert "minute 1:" not in row.ratio
