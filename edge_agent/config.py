"""Agent configuration: a TOML file, overridable by ``EDGEFLEET_AGENT_*`` environment variables.

Config objects only describe; runtime objects (broker clients, containers, the outbox) are built from them
in :mod:`edge_agent.agent`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_agent.errors import ConfigError
from edge_agent.runtime.socket_dir import SOCKET_PATH_MAX, SOCKET_SUFFIX_MAX
from edge_protocol.config_loading import EnvOverFile, load_settings, settings_config
from edge_protocol.desired import is_pinned, load_public_key
from edge_protocol.durations import Duration
from edge_protocol.specs import NAME_PATTERN, HandlerSpec, SubscriptionSpec
from edge_protocol.topics import DEFAULT_PREFIX

ENV_PREFIX = "EDGEFLEET_AGENT_"


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` on a loopback address; anything else is refused (the endpoint has no authentication)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected host:port, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the status endpoint listens on loopback only, not {host}")
    except ValueError as exc:
        if host != "localhost":
            raise ValueError(str(exc)) from None
    return host, int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalBrokerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = Field(
        default=None, description="fixed id for the persistent session; default agent-<device>"
    )
    username: str | None = None
    password: str | None = None
    keepalive: int = Field(default=30, ge=5)
    session_expiry: Duration = Field(
        default=86400.0, ge=0, description="MQTT 5 only: how long the broker keeps our session"
    )
    receive_maximum: int = Field(default=65535, ge=1, le=65535, description="MQTT 5 only")
    protocol: Literal["5", "3.1.1"] = Field(
        default="3.1.1",
        description="3.1.1 (default) halves paho's CPU per event; the broker's persistent_client_expiration and "
        "max_inflight_messages take the place of session_expiry and receive_maximum, which only MQTT 5 uses "
        "(configs/mosquitto/device.conf sets them)",
    )
    broker_config: Path | None = Field(
        default=None,
        description="the device broker's mosquitto.conf: at start the agent warns about settings that undermine "
        "its intake (persistence, max_queued_messages, and for 3.1.1 max_inflight_messages and "
        "persistent_client_expiration)",
    )


class CloudConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = Field(default=None, description="CA that signed the cloud broker's certificate: use TLS")
    tls_cert: Path | None = Field(default=None, description="this device's certificate (TLS client auth)")
    tls_key: Path | None = Field(default=None, description="this device's private key")
    keepalive: int = Field(default=30, ge=5)
    batch_records: int = Field(default=200, ge=1, le=10_000)
    max_unacked: int = Field(default=2000, ge=1)
    resend_after: Duration = Field(default=15.0, gt=0, description="resend records the hub has not acked by then")
    reconnect_max: Duration = Field(default=30.0, gt=0)
    report_interval: Duration = Field(default=10.0, gt=0, description="how often the reported state is refreshed")


class RuntimeConfig(_Section):
    """Supervision of handler containers."""

    restart_backoff: Duration = Field(default=10.0, gt=0, description="first restart delay, doubled each time")
    restart_max: Duration = Field(default=300.0, gt=0, description="cap of the restart delay")
    max_failures: int = Field(default=5, ge=1, description="consecutive failures before a handler is marked failed")
    health_timeout: Duration = Field(
        default=30.0, gt=0, description="an updated handler must answer a health ping within this to take over"
    )
    probation: Duration = Field(
        default=30.0, ge=0, description="the replaced version stays up this long, back in service on a crash-loop"
    )
    image_grace: Duration = Field(
        default=3600.0, ge=0, description="unused handler images are removed this long after their last use"
    )
    socket_dir: Path | None = Field(
        default=None,
        description="where handlers' sockets live; must be visible to the Docker engine (default: systemd's "
        "$RUNTIME_DIRECTORY, else <tmp>/edgefleet-agent-<uid>)",
    )

    @field_validator("socket_dir")
    @classmethod
    def _short_enough(cls, value: Path | None) -> Path | None:
        if value is not None and len(os.fsencode(value)) + SOCKET_SUFFIX_MAX > SOCKET_PATH_MAX:
            limit = SOCKET_PATH_MAX - SOCKET_SUFFIX_MAX
            raise ValueError(f"at most {limit} bytes: a unix socket path below it must fit in {SOCKET_PATH_MAX}")
        return value


class StatusConfig(_Section):
    listen: str | None = Field(
        default=None, description="loopback host:port for Prometheus metrics, e.g. 127.0.0.1:9750"
    )

    @field_validator("listen")
    @classmethod
    def _loopback(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


class OutboxConfig(_Section):
    path: Path | None = Field(default=None, description="default: <data_dir>/outbox.sqlite")
    ttl: Duration = Field(default=7200.0, gt=0)
    max_records: int = Field(default=100_000, ge=10)
    policy: Literal["drop-oldest", "reject-new"] = "drop-oldest"
    synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL", description="NORMAL survives process crashes; FULL also power loss, at a cost"
    )


class DesiredConfig(_Section):
    """How a managed agent judges the expiry of the hub's signed desired state."""

    clock_tolerance: Duration = Field(
        default=300.0, ge=0, description="a document counts as expired only this long after its expires_at"
    )
    require_expiry: bool = Field(
        default=False,
        description="refuse documents without expires_at (no-expiry); leave off while any hub signs none",
    )


class AgentConfig(EnvOverFile):
    """Everything one agent needs; subscriptions and handlers come from here in standalone mode."""

    model_config = settings_config(ENV_PREFIX)

    device_id: str = Field(default_factory=socket.gethostname, pattern=NAME_PATTERN)
    data_dir: Path = Path("./agent-data")
    docker_host: str | None = Field(default=None, description="default: DOCKER_HOST or the local socket")
    max_payload_bytes: int = Field(default=256 * 1024, ge=64)
    grace_period: Duration = Field(default=10.0, ge=0, description="how long SIGTERM waits for queues to drain")
    local_broker: LocalBrokerConfig = LocalBrokerConfig()
    cloud: CloudConfig = CloudConfig()
    outbox: OutboxConfig = OutboxConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    status: StatusConfig = StatusConfig()
    desired: DesiredConfig = DesiredConfig()
    handlers: list[HandlerSpec] = Field(default_factory=list)
    subscriptions: list[SubscriptionSpec] = Field(default_factory=list)
    hub_public_key: str | None = Field(
        default=None, description="managed mode: the hub's Ed25519 public key (PEM, or base64 of the raw 32 bytes)"
    )
    hub_public_key_file: Path | None = Field(default=None, description="managed mode: the key in a file")
    admission: Literal["digest", "any"] | None = Field(
        default=None,
        description="digest: run only images named by digest (repo@sha256:...) or local image id (sha256:...); "
        "default digest when managed, any in standalone mode (the operator names images in this file)",
    )

    @model_validator(mode="after")
    def _references(self) -> AgentConfig:
        if self.hub_public_key and self.hub_public_key_file:
            raise ValueError("set hub_public_key or hub_public_key_file, not both")
        if self.managed and (self.handlers or self.subscriptions):
            raise ValueError("a managed agent (hub key set) gets handlers and subscriptions from the hub, not config")
        if not self.admits_tags:
            for handler in self.handlers:
                if not is_pinned(handler.image):
                    raise ValueError(f"handler {handler.name!r}: image {handler.image!r} is not named by digest")
        if (self.cloud.tls_cert is None) != (self.cloud.tls_key is None):
            raise ValueError("cloud.tls_cert and cloud.tls_key go together")
        if self.managed and not self.cloud.enabled:
            raise ValueError("a managed agent needs the cloud link (cloud.enabled = true)")
        names = [h.name for h in self.handlers]
        if len(set(names)) != len(names):
            raise ValueError("handler names must be unique")
        subs = [s.name for s in self.subscriptions]
        if len(set(subs)) != len(subs):
            raise ValueError("subscription names must be unique")
        for sub in self.subscriptions:
            if sub.handler not in names:
                raise ValueError(f"subscription {sub.name!r} names handler {sub.handler!r}, which is not defined")
        return self

    @property
    def managed(self) -> bool:
        return bool(self.hub_public_key or self.hub_public_key_file)

    @property
    def admits_tags(self) -> bool:
        return (self.admission or ("digest" if self.managed else "any")) == "any"

    def public_key_text(self) -> str | None:
        if self.hub_public_key_file is not None:
            return self.hub_public_key_file.read_text()
        return self.hub_public_key

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.data_dir / "outbox.sqlite"

    @property
    def client_id(self) -> str:
        return self.local_broker.client_id or f"agent-{self.device_id}"


def load_config(path: str | Path | None, **overrides: Any) -> AgentConfig:
    """Read ``path`` (TOML; None for defaults), ``overrides`` and the environment (``EDGEFLEET_AGENT_*``, which wins);
    raise :class:`ConfigError` with one ``field.path: reason`` line per problem."""
    config = load_settings(AgentConfig, path, ConfigError, overrides)
    if config.managed:
        field = "hub_public_key_file" if config.hub_public_key_file else "hub_public_key"
        try:
            load_public_key(config.public_key_text() or "")
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError([f"{field}: not a usable Ed25519 public key ({exc})"]) from None
    return config
