"""The agent's run number: one more at every start, kept in ``<data_dir>/run``.

With the number of each reported state within the run it orders the device's reported states for the hub by
something no clock can skew (docs/decisions.md, "Reported states in the order the device made them").

A run number never falls below the wall clock's whole seconds at its start: a device whose data directory was
wiped (a reinstall) would otherwise start again at 1 and the hub would ignore its reports until the count passed
the stored one. With a clock that is right, or ahead, at that first start its new runs outrank the old ones; an
intact directory still gives every start one more than the last, whatever the clock does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from edge_protocol.files import write_atomically

RUN_FILE = "run"


def next_run(data_dir: Path, wall_clock: Callable[[], float] = time.time) -> int:
    """The number of this run, written to disk (and synced) before it is returned: a crash right after starting
    must not let the next run reuse it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / RUN_FILE
    try:
        last = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        last = 0
    run = max(last + 1, int(wall_clock()))
    write_atomically(path, f"{run}\n".encode())
    return run
