"""The README's first command: the demo runs the whole system, shows aggregates, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes only once reaped, so read its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_demo_shows_aggregates_and_cleans_up_on_interrupt(docker_client: docker.DockerClient,
                                                          handler_images: dict[str, str]) -> None:
    env = dict(os.environ, COLUMNS="250", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--duration", "120", "--window", "2s", "--rate", "40"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )
    lines: list[str] = []
    stored = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            lines.append(line)
            if line.startswith("stored"):
                stored.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert stored.wait(60), "no aggregate stored within 60 s:\n" + "".join(lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    out = "".join(lines)
    assert "stopping" in out
    summary = next(line for line in lines if line.startswith("summary"))
    match = re.search(r"(\d+) windows stored covering (\d+) events", summary)
    assert match is not None, summary
    assert int(match.group(1)) >= 1, summary
    assert int(match.group(2)) >= 1, summary
    assert "processes stopped: True" in summary, summary
    assert "containers left: 0" in summary, summary
    pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
    assert len(pids) == 4, out  # two brokers, the hub, the agent
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "demo processes left running"
    device = re.search(r"agent (demo-[0-9a-f]+)", out)
    assert device is not None
    left = docker_client.containers.list(all=True, filters={"label": f"edgefleet.device={device.group(1)}"})
    assert left == []
