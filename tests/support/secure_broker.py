"""A cloud mosquitto secured as in configs/mosquitto/cloud-tls.conf, built with the hub's own commands.

`SecureCloud` writes a hub config, runs `hub keys init`, `hub ca init`, `hub ca server-cert --host 127.0.0.1`
and `hub broker init-dynsec` (in-process, through typer's runner), then starts mosquitto with the
dynamic-security plugin, a TLS listener (client certificates from the hub's CA, the CN as username, the
CA's CRL) and a loopback listener where the hub logs in with its password. `MqttProbe` is a paho MQTT 5
client that records what the broker answered (CONNACK, SUBACK, PUBACK, DISCONNECT, messages).
"""

from __future__ import annotations

import glob
import os
import secrets
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from hub.cli import app as cli
from hub.config import HubConfig
from scripts.loopback import HOST, free_port
from scripts.mosquitto import Mosquitto

DYNSEC_PLUGIN_GLOBS = ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so")
HUB_USERNAME = "hub"


def dynsec_plugin() -> str:
    """The plugin's path in Debian's mosquitto package (`dpkg -L mosquitto | grep dynamic`)."""
    for pattern in DYNSEC_PLUGIN_GLOBS:
        if found := sorted(glob.glob(pattern)):
            return found[0]
    raise FileNotFoundError("mosquitto_dynamic_security.so not found: apt-get install mosquitto")


class MqttProbe:
    """A paho MQTT 5 client that records the broker's answers; every wait has a deadline."""

    def __init__(self, client_id: str, *, tls: ssl.SSLContext | None = None) -> None:
        # No reconnection: what the broker did to this connection stays visible (and close() is quick).
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False
        )
        if tls is not None:
            self.client.tls_set_context(tls)
        self.connack: Any = None
        self.disconnects: list[Any] = []
        self.subacks: dict[int, list[Any]] = {}
        self.pubacks: dict[int, Any] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self._changed = threading.Condition()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self._record(lambda: setattr(self, "connack", rc))
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self._record(lambda: self.disconnects.append(rc))
        self.client.on_subscribe = lambda _c, _u, mid, rcs, _p: self._record(lambda: self.subacks.update({mid: rcs}))
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self._record(lambda: self.pubacks.update({mid: rc}))
        self.client.on_message = lambda _c, _u, msg: self._record(lambda: self.messages.append(msg))

    def _record(self, change: Any) -> None:
        with self._changed:
            change()
            self._changed.notify_all()

    def wait(self, condition: Any, timeout: float = 5.0) -> bool:
        with self._changed:
            return bool(self._changed.wait_for(condition, timeout))

    def connect(self, port: int, *, username: str | None = None, password: str | None = None) -> MqttProbe:
        """Connect and wait for the CONNACK or the connection's end; `refused` tells which."""
        if username is not None:
            self.client.username_pw_set(username, password)
        try:
            self.client.connect(HOST, port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            self.disconnects.append(exc)  # the TLS handshake failed: refused before MQTT
            return self
        self.client.loop_start()
        self.wait(lambda: self.connack is not None or self.disconnects)
        return self

    @property
    def connected(self) -> bool:
        return self.connack is not None and not self.connack.is_failure and not self.disconnects

    def subscribe(self, topic: str) -> list[int]:
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert self.wait(lambda: mid in self.subacks), f"no SUBACK for {topic}"
        return [code.value for code in self.subacks[mid]]

    def publish(self, topic: str, payload: bytes = b"{}", *, retain: bool = False) -> int:
        """Publish at QoS 1; the PUBACK's reason code (0 or 16 = accepted, 135 = not authorized)."""
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        assert self.wait(lambda: mid in self.pubacks), f"no PUBACK for {topic}"
        return int(self.pubacks[mid].value)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MqttProbe:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def tls_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """As the agent's: TLS 1.2+, the broker checked against `ca`, optionally a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


class _DynsecMosquitto(Mosquitto):
    """Anonymous logins are refused here, so "ready" is the hub logging in on its listener."""

    def __init__(self, *, login: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._login = login

    def _answers(self, proc: subprocess.Popen[bytes], log_offset: int) -> bool:
        try:
            with self.log_path.open("rb") as log:
                log.seek(log_offset)
                bound = b" running" in log.read()
        except FileNotFoundError:
            return False
        if not bound or proc.poll() is not None:
            return False
        probe = MqttProbe(f"ready-{secrets.token_hex(3)}")
        with probe.connect(self.port, username=self._login[0], password=self._login[1]):
            return probe.connected


class SecureCloud:
    """A hub config, its CA and signing key, and a dynsec-secured mosquitto; `with SecureCloud(dir, prefix):`."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root = root
        self.prefix = prefix
        self.ca_dir = root / "ca"
        self.dynsec_file = root / "dynamic-security.json"
        self.hub_password = secrets.token_urlsafe(16)
        self.hub_port, self.tls_port = free_port(), free_port()
        self.config_path = root / "hub.toml"
        self.runner = CliRunner()
        self.broker: Mosquitto | None = None

    def _write_config(self) -> None:
        self.config_path.write_text(
            f'[broker]\nhost = "{HOST}"\nport = {self.hub_port}\nprefix = "{self.prefix}"\n'
            f'client_id = "hub-{self.prefix}"\nusername = "{HUB_USERNAME}"\npassword = "{self.hub_password}"\n'
            f'[store]\nurl = "sqlite:///{self.root / "hub.db"}"\n'
            f'[signing]\nprivate_key = "{self.root / "keys" / "hub-signing.key"}"\n'
            f'[provisioning]\nca_dir = "{self.ca_dir}"\nbroker_host = "{HOST}"\nbroker_port = {self.tls_port}\n'
            f'password_port = {self.hub_port}\nagent_data_dir = "{self.root / "agent-data"}"\n'
        )

    @property
    def config(self) -> HubConfig:
        return HubConfig.load(self.config_path)

    def hub(self, *args: str, check: bool = True) -> Any:
        """Run `hub ARGS...` in-process (commands that take --config get this cloud's)."""
        result = self.runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})
        if check:
            assert result.exit_code == 0, f"hub {' '.join(args)}: {result.output}{result.stderr}"
        return result

    def provision(self, device_id: str, *extra: str, out: Path | None = None) -> Path:
        """`hub device provision ID` into `out` (default root/devices/ID), installed in place; the directory."""
        out = out or self.root / "devices" / device_id
        self.hub(
            "device",
            "provision",
            device_id,
            "--out",
            str(out),
            "--install-dir",
            str(out),
            "--config",
            str(self.config_path),
            *extra,
        )
        return out

    def revoke(self, device_id: str) -> Any:
        return self.hub("device", "revoke", device_id, "--config", str(self.config_path))

    def reload(self) -> None:
        """SIGHUP: mosquitto reloads its config, and with it the CRL."""
        assert self.broker is not None
        assert self.broker.pid is not None
        os.kill(self.broker.pid, signal.SIGHUP)
        time.sleep(0.3)  # the reload is asynchronous; give the broker's loop a turn

    def device_tls(self, device_dir: Path) -> ssl.SSLContext:
        return tls_context(device_dir / "ca.crt", device_dir / "device.crt", device_dir / "device.key")

    def start(self) -> SecureCloud:
        cfg = ["--config", str(self.config_path)]
        self._write_config()
        self.hub("keys", "init", "--dir", str(self.root / "keys"))
        self.hub("ca", "init", *cfg)
        self.hub("ca", "server-cert", "--host", HOST, "--host", "localhost", *cfg)
        self.hub("broker", "init-dynsec", "--file", str(self.dynsec_file), *cfg)
        self.broker = _DynsecMosquitto(
            port=self.hub_port, login=(HUB_USERNAME, self.hub_password), extra_config=self._broker_config()
        )
        self.broker.start()
        return self

    def _broker_config(self) -> Sequence[str]:
        ca = self.ca_dir
        return [
            "allow_anonymous false",  # overrides the base config's (per_listener_settings false: global)
            # With max_queued_messages 0 (unlimited, the base config's), mosquitto 2.0.11 drops a connection at
            # its next packet after a denied QoS 1 publish (PUBACK 135), over TLS or not: bound it instead.
            "max_queued_messages 1000000",
            f"plugin {dynsec_plugin()}",
            f"plugin_opt_config_file {self.dynsec_file}",
            f"listener {self.tls_port} {HOST}",
            f"cafile {ca / 'ca.crt'}",
            f"certfile {ca / 'server.crt'}",
            f"keyfile {ca / 'server.key'}",
            f"crlfile {ca / 'crl.pem'}",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.2",
        ]

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()

    def __enter__(self) -> SecureCloud:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
