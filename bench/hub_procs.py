"""The processes of the hub benchmarks: one ``hub serve`` and one ``hub simulate``, each its own process."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.procs import VENV_BIN, Helper
from fleet_simulator.fleet import raise_open_files
from scripts.loopback import free_port

HUB = str(VENV_BIN / "hub")


def nofile(devices: int) -> dict[str, int]:
    """Raise our open-files limit to the hard limit: mosquitto and the simulator inherit it (a socket each)."""
    soft, hard = raise_open_files(1 << 20)
    if soft < devices + 256:
        raise RuntimeError(f"{devices} devices need about {devices + 256} open files; the hard limit is {hard}")
    return {"soft": soft, "hard": hard}


class HubServer:
    """``hub serve`` on SQLite in ``tmp``, its API on a free loopback port, no token (loopback only)."""

    def __init__(
        self,
        tmp: Path,
        broker_port: int,
        *,
        signing_key: Path | None = None,
        broker_options: dict[str, int] | None = None,
    ) -> None:
        self.db_path = tmp / "hub.db"
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.config = tmp / "hub.toml"
        self.log = tmp / "hub.log"
        lines = [
            "[broker]", 'host = "127.0.0.1"', f"port = {broker_port}", 'client_id = "hub-bench"',
            *(f"{key} = {value}" for key, value in (broker_options or {}).items()),
            "[store]", f'url = "sqlite:///{self.db_path}"',
            "[api]", 'host = "127.0.0.1"', f"port = {self.api_port}",
        ]  # fmt: skip
        if signing_key is not None:
            lines += ["[signing]", f'private_key = "{signing_key}"']
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> HubServer:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [HUB, "serve", "--config", str(self.config), "--log-level", "info"], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while b"hub ready" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hub serve did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def wait_devices(self, count: int, timeout: float) -> None:
        """Until the hub has heard from ``count`` devices."""
        deadline = time.monotonic() + timeout
        with self.api() as http:
            while len(http.get("/v1/devices").raise_for_status().json()) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the hub knows fewer than {count} devices after {timeout:g}s")
                time.sleep(0.5)

    def stored(self) -> int:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM aggregates").fetchone()[0])
        finally:
            db.close()

    def wait_stored(self, quiet: float, timeout: float) -> None:
        """Until no result was stored for ``quiet`` seconds, at most ``timeout``: what the hub still had queued."""
        deadline, last = time.monotonic() + timeout, -1
        while time.monotonic() < deadline:
            now = self.stored()
            if now == last:
                return
            last = now
            time.sleep(quiet)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Simulator(Helper):
    """``hub simulate --json``: progress lines as dicts; ``wait_event`` stamps the line with ``at`` (time.time)."""

    def __init__(self, broker_port: int, devices: int, *args: str) -> None:
        super().__init__(
            "--devices", str(devices), "--broker", f"127.0.0.1:{broker_port}", "--json", "--every", "2s", *args,
            command=[HUB, "simulate"],
        )  # fmt: skip
        self.devices = devices
        self.lines: list[dict[str, Any]] = []

    @property
    def shutdown_timeout(self) -> float:
        """Seconds from SIGTERM to the ``final`` line (:func:`shutdown_seconds` of this one's devices)."""
        return shutdown_seconds(self.devices)

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.read(timeout=max(0.1, deadline - time.monotonic()))
            line["at"] = time.time()
            self.lines.append(line)
            if line.get("event") == event:
                return line

    def stop(self) -> dict[str, Any]:
        """SIGTERM, then the simulator's final figures."""
        self.proc.terminate()
        return self.wait_event("final", timeout=self.shutdown_timeout)

    def close(self) -> None:
        """SIGTERM: the devices publish their offline status and disconnect, then SIGKILL if it takes longer than
        the final line may (:attr:`shutdown_timeout`)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.shutdown_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def shutdown_seconds(devices: int) -> float:
    """Seconds ``devices`` take from SIGTERM to the ``final`` line: the devices' 10 s shutdown grace, then every
    device's task cancelled and the figures summed, which on a busy machine takes about 20 ms a device."""
    return 30.0 + devices / 50


def _terminate_all(sims: list[Simulator]) -> float:
    """SIGTERM every simulator still running at once (they shut down in parallel, not one after another while
    the others still publish); the monotonic deadline for all of them."""
    for sim in sims:
        if sim.proc.poll() is None:
            sim.proc.terminate()
    # All of them share the machine's cores while they shut down: the bound is the whole fleet's, not one
    # simulator's (four of 2,500 devices each once took more than one's 80 s on 2 cores).
    return time.monotonic() + shutdown_seconds(sum(sim.devices for sim in sims))


def stop_all(sims: list[Simulator]) -> list[dict[str, Any]]:
    """Stop every simulator at once, then each one's final figures, all before one deadline."""
    deadline = _terminate_all(sims)
    return [sim.wait_event("final", timeout=max(1.0, deadline - time.monotonic())) for sim in sims]


def close_all(sims: list[Simulator]) -> None:
    """Stop every simulator still running at once, then wait for all of them: SIGKILL those still running after
    the deadline. None is left running, whatever happened before."""
    deadline = _terminate_all(sims)
    for sim in sims:
        try:
            sim.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            sim.proc.kill()
            sim.proc.wait()
