"""The README's first command: the demo runs the system in managed mode, shows aggregates and a rollout that
completes, serves the console, and leaves nothing behind on Ctrl-C."""

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
import httpx
import pytest

from scripts.registry import local_references, registry_answers
from tests.support.engine import ensure_handler_images

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("edgefleet/temp-c:dev", "edgefleet/temp-c-v2:dev")  # releases 1.0 and 1.1 of the demo


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


class Output:
    """The demo's output, read line by line in a thread; :meth:`wait` waits for a line matching a pattern."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True, name="test.demo-output")
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def find(self, pattern: str) -> re.Match[str] | None:
        return next((m for line in self.lines if (m := re.search(pattern, line))), None)

    def wait(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line matching `pattern`; fails after `timeout` seconds or when the demo ends without one."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (match := self.find(pattern)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise AssertionError(f"no line matching {pattern!r} within {timeout:g}s:\n{self.text}")
                self._changed.wait(min(left, 1.0))
            return match

    def join(self) -> None:
        self._thread.join(timeout=10)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval of a wait with a deadline
    return alive


def _console_shows_the_rollout(url: str, token: str, rollout_id: int) -> None:
    """What an operator does with the printed URL and token: the login page, a login, the rollout's page."""
    with httpx.Client(base_url=url, timeout=10) as browser:
        form = browser.get("/console/login")
        assert form.status_code == 200, form.text
        nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert nonce is not None, form.text
        login = browser.post("/console/login", data={"csrf": nonce.group(1), "token": token, "next": "/console/fleet"})
        assert login.status_code == 303, login.text
        page = browser.get(f"/console/rollouts/{rollout_id}")
        assert page.status_code == 200, page.text
        state = re.search(r'id="rollout-state">([a-z]+)<', page.text)
        assert state is not None, page.text
        assert state.group(1) == "completed"


def test_demo_rolls_out_serves_the_console_and_cleans_up_on_interrupt(docker_client: docker.DockerClient) -> None:
    ensure_handler_images(docker_client, IMAGES)
    env = dict(os.environ, COLUMNS="250", PYTHONUNBUFFERED="1")
    argv = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--duration", "200", "--window", "2s",
            "--rate", "40", "--rollout-after", "5", "--simulated", "2"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    out = Output(proc)
    try:
        url = out.wait(r"^console: (http://127\.0\.0\.1:\d+)/console\b", 90).group(1)
        token = out.wait(r"^token: (\S+)", 5).group(1)
        device = out.wait(r"^agent (demo-[0-9a-f]+) pid \d+", 10).group(1)
        registry = out.wait(r"^registry (http://(127\.0\.0\.1:\d+)) pid \d+", 5)
        out.wait(r"^stored ", 90)
        # The rollout to 1.1 passes the canary and then the batch; any other end fails the test at once.
        finished = out.wait(r"^rollout \S+ #(\d+) temp-c 1\.0 -> 1\.1: (completed|halted|aborted|undone)\b", 120)
        assert finished.group(2) == "completed", out.text
        assert out.find(r"^rollout .* started: 2 steps"), out.text
        assert out.find(r"^rollout .*: running, step 1/2: demo-"), out.text

        # The device's windows come from release 1.0 first, then from 1.1 (the v2 image) once it took over.
        out.wait(r"^stored .* v2\s*$", 30)

        _console_shows_the_rollout(url, token, int(finished.group(1)))
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
            rollout = api.get(f"/v1/rollouts/{finished.group(1)}").json()
            assert rollout["state"] == "completed", rollout
            assert rollout["passed"] == rollout["planned"] == 3, rollout
            rows = api.get("/v1/aggregates", params={"device": device, "limit": 1000}).json()
            assert sum(r["events"] for r in rows) > 0, rows
            versions = {r["fields"]["v"]["max"] for r in rows}
            assert {1.0, 2.0} <= versions, versions

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, out.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.join()
    text = out.text
    assert "stopping" in text
    summary = out.find(r"^summary: .*")
    assert summary is not None, text
    counts = re.search(r"(\d+) windows stored covering (\d+) events", summary.group(0))
    assert counts is not None, summary.group(0)
    assert int(counts.group(1)) >= 1, summary.group(0)
    assert int(counts.group(2)) >= 1, summary.group(0)
    assert "rollout: completed" in summary.group(0)
    assert "processes stopped: True" in summary.group(0)
    assert "containers left: 0" in summary.group(0)
    pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
    assert len(pids) == 6, text  # two brokers, the registry, the hub, the agent, the simulator
    assert _wait_gone(pids, 10) == [], "demo processes left running"
    assert docker_client.containers.list(all=True, filters={"label": f"edgefleet.device={device}"}) == []
    assert not registry_answers(registry.group(1), timeout=1)
    assert local_references(docker_client, registry.group(2)) == [], "pulled images of the demo's registry left"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)
