"""The desired-state files and the run number are replaced atomically and durably: file fsynced, renamed, and
the directory fsynced, so the rename survives a power cut."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import edge_agent.reconciler as reconciler_module
from edge_agent.runs import RUN_FILE, next_run


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_the_desired_state_file_is_written_then_its_directory_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _record_fsyncs(monkeypatch)
    path = tmp_path / "data" / "desired.json"
    reconciler_module._write_atomically(path, b"one")
    reconciler_module._write_atomically(path, b"two")
    assert path.read_bytes() == b"two"
    assert synced == ["file", "dir", "file", "dir"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["desired.json"], "no temporary file left"


def test_the_run_number_is_written_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _record_fsyncs(monkeypatch)
    assert next_run(tmp_path, wall_clock=lambda: 5.0) == 5
    assert (tmp_path / RUN_FILE).read_text() == "5\n"
    assert synced == ["file", "dir"]
