"""The agent's desired-state files and its run number are replaced with the shared durable write
(:func:`edge_protocol.files.write_atomically`, tested in ``tests/unit/protocol/test_files.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

import edge_agent.reconciler as reconciler_module
from edge_agent.runs import RUN_FILE, next_run
from edge_protocol.files import write_atomically
from tests.support.fsyncs import record_fsyncs


def test_the_desired_state_files_use_the_shared_durable_write() -> None:
    assert reconciler_module._write_atomically is write_atomically


def test_the_run_number_is_written_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = record_fsyncs(monkeypatch)
    assert next_run(tmp_path, wall_clock=lambda: 5.0) == 5
    assert (tmp_path / RUN_FILE).read_text() == "5\n"
    assert synced == ["file", "dir"]
