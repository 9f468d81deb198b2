"""The agent's run number: one more at every start, kept in ``<data_dir>/run``.

With the number of each reported state within the run it orders the device's reported states for the hub by
something no clock can skew (docs/decisions.md, "Reported states in the order the device made them").
"""

from __future__ import annotations

import os
from pathlib import Path

RUN_FILE = "run"


def next_run(data_dir: Path) -> int:
    """The number of this run, written to disk (and synced) before it is returned: a crash right after starting
    must not let the next run reuse it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / RUN_FILE
    try:
        last = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        last = 0
    run = last + 1
    tmp = path.with_name(f".{RUN_FILE}.tmp")
    with open(tmp, "w") as f:
        f.write(f"{run}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return run
