"""A local server process (a broker, a registry) on a free loopback port: start with retries, stop, kill, restart."""

from __future__ import annotations

import abc
import random
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on right now (the caller binds it soon after).

    Chosen below the kernel's ephemeral range: a port from bind(0) is in that range, and between our check and
    the server's bind an outgoing connection of any process (an agent's, the engine's) could be given it.
    """
    ephemeral_low = _ephemeral_range()[0]
    for _ in range(200):
        port = random.randrange(max(1024, ephemeral_low - 12_000), ephemeral_low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {ephemeral_low} on {host}")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return int(low), int(high)


class LoopbackService(abc.ABC):
    """One process in its own temp dir; ``restart()`` keeps the port and whatever the process stores there.

    Subclasses say how to configure (``_write_config``), run (``_command``) and probe (``_answers``) it.
    """

    name = "service"

    def __init__(self, *, port: int | None, start_timeout: float, prefix: str) -> None:
        self.host = HOST
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._start_timeout = start_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.dir = Path(self._tmp.name)
        self._proc: subprocess.Popen[bytes] | None = None

    log_path: Path

    @abc.abstractmethod
    def _write_config(self) -> None: ...

    @abc.abstractmethod
    def _command(self) -> list[str]: ...

    @abc.abstractmethod
    def _answers(self, proc: subprocess.Popen[bytes], log_offset: int) -> bool:
        """True once this process (not another one that took the port first) serves on it."""

    @abc.abstractmethod
    def log_text(self) -> str: ...

    def _output(self) -> IO[bytes]:
        """Where the process's stdout/stderr go."""
        return (self.dir / "stderr.log").open("wb")

    def _env(self) -> dict[str, str] | None:
        return None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start and return once it answers; retries on a new port if another process took ours first."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        returncode: int | None = None
        for _attempt in range(1 if self._fixed_port else 3):
            self._write_config()
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self._output() as out:
                self._proc = proc = subprocess.Popen(
                    self._command(), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self._env()
                )
            deadline = time.monotonic() + self._start_timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if self._answers(proc, log_offset):
                    self._fixed_port = True  # clients know this port now: restart() must keep it
                    return self
                time.sleep(0.05)  # polling interval
            if proc.poll() is None:
                self.kill()
                raise TimeoutError(f"{self.name} did not answer on port {self.port}:\n{self.log_text()}")
            returncode, self._proc = proc.returncode, None
            if not self._fixed_port:
                self.port = free_port()  # lost the race for the port to another process
        raise RuntimeError(f"{self.name} exited with {returncode}:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the process saves its state on the way out), then SIGKILL as a fallback."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests; whatever was not yet saved is lost."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port with the same stored state."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and delete the temp dir."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
