"""The agent under test as its own process (``edge-agent run``), so its CPU time and RSS are its alone.

Progress comes from the agent's outbox, read-only: every batch the agent processes ends in one SQLite
transaction that adds the windows it closed and replaces the checkpoint of its open windows, so the ``events``
of a subscription's records plus those of its checkpointed open windows is exactly the number of events the
agent has processed and made durable, consistent in one read transaction and at most one batch behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors

from bench.procs import VENV_BIN, cpu_seconds
from tests.support.toml import to_toml

LABEL_DEVICE = "edgefleet.device"


class AgentProcess:
    """``edge-agent run --config FILE`` with a generated config; ``stop()`` also removes its containers."""

    def __init__(self, config: dict[str, Any], *, docker_client: docker.DockerClient) -> None:
        self.config = config
        self.device_id = str(config["device_id"])
        self.data_dir = Path(config["data_dir"])
        self.outbox = self.data_dir / "outbox.sqlite"
        self.log_path = self.data_dir / "agent.log"
        self._docker = docker_client
        self.proc: subprocess.Popen[bytes] | None = None
        self._db: sqlite3.Connection | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> float:
        """Start and return once the agent says it is running (handlers started, broker connected)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "agent.toml"
        path.write_text(to_toml(self.config))
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "edge-agent"), "run", "--config", str(path), "--log-level", "INFO"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
            )
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
            if f"agent {self.device_id} running" in self.log_path.read_text(errors="replace"):
                return time.monotonic() - started
            time.sleep(0.1)
        raise TimeoutError(f"agent not running after {timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def handler_pids(self) -> dict[str, int]:
        """Handler name -> host pid of its container's main process."""
        out: dict[str, int] = {}
        for c in self._docker.containers.list(filters={"label": f"{LABEL_DEVICE}={self.device_id}"}):
            out[c.labels.get("edgefleet.handler", c.name)] = int(c.attrs["State"]["Pid"])
        return out

    # -- progress from the outbox ------------------------------------------------------------------------
    def processed(self, subscription: str) -> int:
        """Events of ``subscription`` durably processed so far (closed windows + checkpointed open ones)."""
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True, isolation_level=None)
        db = self._db
        db.execute("BEGIN")
        try:
            closed = db.execute(
                "SELECT COALESCE(SUM(json_extract(CAST(body AS TEXT), '$.events')), 0) FROM records "
                "WHERE subscription = ?",
                (subscription,),
            ).fetchone()[0]
            # Checkpoints are kept per revision (name@revision) and an intake worker's per part (#pN).
            rows = db.execute(
                "SELECT state FROM checkpoints WHERE subscription = ? OR substr(subscription, 1, ?) = ?",
                (subscription, len(subscription) + 1, f"{subscription}@"),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        open_events = 0
        for (raw,) in rows:
            state = json.loads(raw)
            open_events += sum(int(w["events"]) for w in state.get("windows", []) + state.get("sessions", []))
        return int(closed) + open_events

    def wait_processed(self, subscription: str, target: int, timeout: float, poll: float = 0.01) -> float | None:
        """Wall-clock time at which ``processed`` reached ``target``, or None on timeout.

        The end is known to within ``poll``: at 50 ms, a 1-second burst of ``--quick`` read up to 5% slow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processed(subscription) >= target:
                return time.time()
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(poll)
        return None

    def proc_signal(self, signum: int) -> None:
        """Send the agent process a signal (SIGSTOP/SIGCONT: hold it while a backlog is preloaded)."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    # -- teardown ------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 20.0) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        remove_labelled(self._docker, self.device_id)

    def __enter__(self) -> AgentProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def remove_labelled(client: docker.DockerClient, device_id: str) -> int:
    """Force-remove every container labelled edgefleet.device=<device_id>."""
    containers = client.containers.list(all=True, filters={"label": f"{LABEL_DEVICE}={device_id}"})
    for container in containers:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)
    return len(containers)


class DeadLetters:
    """Counts the agent's dead letters on the device broker (``edgefleet/deadletter/#``) by reason."""

    def __init__(self, host: str, port: int, topic: str = "edgefleet/deadletter/#") -> None:
        import paho.mqtt.client as mqtt

        self.by_reason: dict[str, int] = {}
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_a: c.subscribe(topic, 1)
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            reason = str(json.loads(msg.payload).get("reason", "?"))
        except ValueError:
            reason = "?"
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
