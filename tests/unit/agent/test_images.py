"""ImageLedger: which handler images may be removed, and when."""

from __future__ import annotations

from pathlib import Path

from edge_agent.images import ImageLedger


def test_previous_release_is_kept_and_older_ones_go_after_the_grace(tmp_path: Path) -> None:
    ledger = ImageLedger(tmp_path / "images.sqlite")
    ledger.in_use("temp-c", "img:1", now=0)
    ledger.in_use("temp-c", "img:2", now=100)  # img:1 retired at 100, the previous release
    assert ledger.removable(grace=10, now=1000) == []
    ledger.in_use("temp-c", "img:3", now=104)  # img:2 is now the previous release; img:1 may go
    assert ledger.removable(grace=10, now=105) == []  # img:1 retired at 100: still within the grace
    assert ledger.removable(grace=10, now=1000) == ["img:1"]
    ledger.forget("img:1")
    assert ledger.removable(grace=10, now=1000) == []


def test_rollback_to_a_retired_image_makes_it_current_again(tmp_path: Path) -> None:
    ledger = ImageLedger(tmp_path / "images.sqlite")
    ledger.in_use("h", "a", now=0)
    ledger.in_use("h", "b", now=10)
    ledger.in_use("h", "c", now=20)
    ledger.in_use("h", "a", now=30)  # back to a: a is current, c the previous release, b may go
    assert ledger.removable(grace=0, now=40) == ["b"]


def test_a_removed_handler_keeps_its_last_image_as_the_previous_release(tmp_path: Path) -> None:
    ledger = ImageLedger(tmp_path / "images.sqlite")
    ledger.in_use("h", "a", now=0)
    ledger.in_use("g", "x", now=0)
    ledger.retired("h", now=50)
    assert ledger.removable(grace=0, now=100) == []
    ledger.in_use("g", "y", now=60)
    ledger.in_use("g", "z", now=70)
    assert ledger.removable(grace=0, now=100) == ["x"]
