"""The agent and the hub as real CLI processes (``edge-agent run``, ``hub serve``): crash them, restart them.

Everything started here is stopped by its context manager (SIGTERM, then SIGKILL as a fallback), so a failing
test leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scripts.loopback import free_port
from scripts.mosquitto import Mosquitto
from tests.support.running import wait_for
from tests.support.toml import to_toml

BIN = Path(sys.executable).parent


class Daemon:
    """A CLI daemon (edge-agent or hub) as a subprocess logging to a file; SIGKILL and restart on demand."""

    def __init__(self, argv: list[str], log_path: Path, ready_line: str) -> None:
        self._argv = argv
        self.log_path = log_path
        self._ready_line = ready_line
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log_text(self, *, since_start: bool = False) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[self._log_offset if since_start else 0 :].decode(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def start(self, timeout: float = 60.0) -> None:
        """Start and return once the ready line is logged (fail early if the process exits)."""
        assert not self.running, "already running"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(os.environ)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.starts += 1
        await wait_for(
            lambda: self._ready_line in self.log_text(since_start=True) or not self.running,
            timeout=timeout,
            what=f"{self._argv[0]} ready",
            detail=self.tail,
        )
        assert self.running, f"{self._argv[0]} exited with {self.returncode}:\n{self.tail()}"

    def kill(self) -> None:
        """SIGKILL, a crash: no cleanup of any kind runs."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(30)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (the graceful path); SIGKILL after ``timeout``. Returns the exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        return self._proc.returncode

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the running process, in KiB: current and peak resident memory."""
        fields: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(rest.split()[0])
        return fields["VmRSS"], fields["VmHWM"]


@contextlib.contextmanager
def agent_process(config: dict[str, Any], workdir: Path) -> Iterator[Daemon]:
    """``edge-agent run --config`` for ``config`` (not started yet); stopped at exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "agent.toml"
    path.write_text(to_toml(config))
    agent = Daemon(
        [str(BIN / "edge-agent"), "run", "--config", str(path)],
        workdir / "agent.log",
        f"agent {config['device_id']} running",
    )
    try:
        yield agent
    finally:
        agent.stop()


@contextlib.contextmanager
def hub_process(cloud: Mosquitto, prefix: str, workdir: Path) -> Iterator[tuple[Daemon, Path, str]]:
    """``hub serve --config`` on ``cloud`` (not started yet); yields (daemon, store path, API URL)."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "hub.db"
    port = free_port()
    path = workdir / "hub.toml"
    path.write_text(to_toml({
        "broker": {
            "host": cloud.host, "port": cloud.port, "prefix": prefix, "client_id": f"hub-{uuid.uuid4().hex[:8]}"
        },
        "store": {"url": f"sqlite:///{db}"},
        "api": {"host": "127.0.0.1", "port": port},
    }))
    hub = Daemon([str(BIN / "hub"), "serve", "--config", str(path)], workdir / "hub.log", "hub ready")
    try:
        yield hub, db, f"http://127.0.0.1:{port}"
    finally:
        hub.stop()
