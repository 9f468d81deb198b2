"""Recording the fsyncs a durable write makes, for the tests of the agent's and the hub's files."""

from __future__ import annotations

import os
import stat

import pytest


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The fsyncs made from now on, each "file" or "dir"."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced
