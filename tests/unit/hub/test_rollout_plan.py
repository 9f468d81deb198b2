"""The plan of a rollout: the canary, then batches from a count or a percentage of all devices (rounded up, at
least one), devices by id."""

from __future__ import annotations

import pytest

from hub.rollouts.plan import batch_size, plan

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
