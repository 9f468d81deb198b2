"""Real mosquitto brokers for the demo, the benchmark and the tests, each in a temp dir on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from scripts.loopback import LoopbackService

MOSQUITTO = "/usr/sbin/mosquitto"


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


class Mosquitto(LoopbackService):
    """A mosquitto process with persistence; `restart()` keeps its port and its persisted sessions.

    Config: no queue or in-flight limits (mosquitto's default max_queued_messages of 1000 silently drops
    bursts to slow QoS 1 subscribers), log to `log_path`. `extra_config` lines are appended verbatim.
    """

    name = "mosquitto"

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_config: Sequence[str] = (),
        binary: str = MOSQUITTO,
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, prefix="edgefleet-mosquitto-")
        self._extra_config = list(extra_config)
        self._binary = binary
        self.config_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

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

    def _command(self) -> list[str]:
        return [self._binary, "-c", str(self.config_path)]

    def __repr__(self) -> str:
        return f"Mosquitto({self.url}, running={self.running})"
