"""The run number orders a device's reported states at the hub: it must only grow, even when the data is wiped."""

from __future__ import annotations

from pathlib import Path

from edge_agent.runs import RUN_FILE, next_run

NOW = 1_800_000_000.0


def test_each_start_is_one_more_than_the_last_whatever_the_clock(tmp_path: Path) -> None:
    first = next_run(tmp_path, wall_clock=lambda: NOW)
    # The clock set back by a day at the next boot: the number still grows.
    assert next_run(tmp_path, wall_clock=lambda: NOW - 86_400) == first + 1
    assert (tmp_path / RUN_FILE).read_text().strip() == str(first + 1)


def test_a_wiped_data_dir_still_outranks_the_runs_before_it(tmp_path: Path) -> None:
    old = tmp_path / "old"
    for _ in range(3):
        before = next_run(old, wall_clock=lambda: NOW)
    # Reinstalled a minute later with an empty data directory: the hub must take its reports.
    assert next_run(tmp_path / "new", wall_clock=lambda: NOW + 60) > before
