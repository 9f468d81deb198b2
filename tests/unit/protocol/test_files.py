"""Files replaced whole, by the agent and the hub alike: written to a temporary file, fsynced, given their mode,
renamed, and the directory fsynced, so that the rename survives a power cut; a failed write leaves the old
file as it was and no temporary behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge_protocol.files import write_atomically
from tests.support.fsyncs import record_fsyncs


def test_a_file_is_written_then_its_directory_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = record_fsyncs(monkeypatch)
    path = tmp_path / "data" / "desired.json"  # the directory is made on the first write
    write_atomically(path, b"one")
    write_atomically(path, b"two")
    assert path.read_bytes() == b"two"
    assert synced == ["file", "dir", "file", "dir"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["desired.json"], "no temporary file left"


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_the_file_gets_its_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "hub-signing.key"
    write_atomically(path, b"old", 0o666)
    write_atomically(path, b"secret", mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "desired.json"
    write_atomically(path, b"old")

    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["desired.json"], "no temporary file left"
