"""Real mosquitto brokers for tests and benchmarks, each in its own temp dir on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mqtt_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when an MQTT 5 CONNECT on host:port gets a successful CONNACK within `timeout` seconds."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    acked: list[bool] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: acked.append(not reason.is_failure)
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return False
    try:
        deadline = time.monotonic() + timeout
        while not acked and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                return False
        return bool(acked) and acked[0]
    finally:
        client.disconnect()


class Mosquitto:
    """A mosquitto process with persistence; `restart()` keeps its port and its persisted sessions.

    Config: no queue or in-flight limits (mosquitto's default max_queued_messages of 1000 silently drops
    bursts to slow QoS 1 subscribers), log to `log_path`. `extra_config` lines are appended verbatim.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_config: Sequence[str] = (),
        binary: str = MOSQUITTO,
        start_timeout: float = 10.0,
    ) -> None:
        self.host = HOST
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._extra_config = list(extra_config)
        self._binary = binary
        self._start_timeout = start_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="edgefleet-mosquitto-")
        self.dir = Path(self._tmp.name)
        self.config_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.log_path}",
            *(f"log_type {kind}" for kind in ("error", "warning", "notice", "information")),
        ]
        if os.geteuid() == 0:
            # As root, mosquitto otherwise switches to user "mosquitto", which cannot write to our temp dir.
            lines.append("user root")
        lines += self._extra_config
        self.config_path.write_text("\n".join(lines) + "\n")

    def log_text(self) -> str:
        """The broker's log, after what it wrote to stderr (config errors, before the log file opens)."""
        texts = []
        for path in (self.dir / "stderr.log", self.log_path):
            with contextlib.suppress(FileNotFoundError):
                texts.append(path.read_text(errors="replace"))
        return "".join(texts)

    def _answers(self, proc: subprocess.Popen[bytes], log_offset: int) -> bool:
        # "running" is logged once the listener is bound: before that, whatever answers on the port is
        # some other process that took it first. The log survives restarts, hence the offset.
        try:
            with self.log_path.open("rb") as log:
                log.seek(log_offset)
                bound = b" running" in log.read()
        except FileNotFoundError:
            bound = False
        return bound and mqtt_answers(self.host, self.port) and proc.poll() is None

    def start(self) -> Mosquitto:
        """Start the broker and return once it answers MQTT; retries a new port if ours was taken."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        returncode: int | None = None
        for _attempt in range(1 if self._fixed_port else 3):
            self._write_config()
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with (self.dir / "stderr.log").open("wb") as stderr:
                self._proc = proc = subprocess.Popen(
                    [self._binary, "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            deadline = time.monotonic() + self._start_timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if self._answers(proc, log_offset):
                    self._fixed_port = True  # clients know this port now: restart() must keep it
                    return self
                time.sleep(0.05)  # polling interval
            if proc.poll() is None:
                self.kill()
                raise TimeoutError(f"mosquitto did not answer on {self.url}:\n{self.log_text()}")
            returncode, self._proc = proc.returncode, None
            if not self._fixed_port:
                self.port = free_port()  # lost the race for the port to another process
        raise RuntimeError(f"mosquitto exited with {returncode}:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (mosquitto saves its persistence file on the way out); SIGKILL as a fallback."""
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
        """SIGKILL: a crash, for fault tests; whatever was not yet persisted is lost."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def restart(self) -> Mosquitto:
        """Stop (if running) and start again on the same port with the same persistence."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and delete the temp dir."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Mosquitto({self.url}, running={self.running})"
