"""Hub configuration: a TOML file with environment overrides (``EDGEFLEET_HUB_BROKER__PORT=1884``).

Precedence, highest first: environment variables, the TOML file, the defaults below. The config is a plain
value object; runtime objects (store, broker, API server) are built from it in :mod:`hub.service`.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from edge_protocol.config_loading import EnvOverFile, load_settings, settings_config
from edge_protocol.durations import Duration
from edge_protocol.topics import DEFAULT_PREFIX
from hub.errors import ConfigError

ENV_PREFIX = "EDGEFLEET_HUB_"


def _default_client_id() -> str:
    return f"hub-{socket.gethostname()}"


class _Section(BaseModel):
    # A misspelt key in the file must fail loudly rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerConfig(_Section):
    """The cloud MQTT broker the hub consumes from and publishes acks to."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    prefix: str = DEFAULT_PREFIX
    client_id: str = Field(default_factory=_default_client_id, min_length=1)
    username: str | None = None
    password: SecretStr | None = None
    keepalive: int = Field(default=30, ge=5, le=3600, description="seconds")
    receive_maximum: int = Field(
        default=1,
        ge=0,
        le=65535,
        description="unacknowledged messages the broker sends ahead of ingest (MQTT 5 Receive Maximum); 0: no bound",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value.startswith(("/", "$")) or value.endswith("/") or any(c in value for c in "+#\0"):
            raise ValueError("a topic prefix is non-empty, without '+', '#', a leading '$' or '/' or a trailing '/'")
        return value


class StoreConfig(_Section):
    """Where aggregates and devices are stored (any SQLAlchemy URL; SQLite and PostgreSQL are tested)."""

    url: str = Field(default="sqlite:///./hub.db", min_length=1)
    migrate: bool = Field(
        default=True, description="migrate the schema at start; false: `hub db upgrade` does it, the hub only checks"
    )


class ApiConfig(_Section):
    """The HTTP API that the CLI (and later the web console) uses."""

    host: str = "127.0.0.1"
    port: int = Field(default=8780, ge=0, le=65535, description="0 picks a free port")
    token: SecretStr | None = Field(default=None, description="when set, /v1 requires 'Authorization: Bearer'")

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("an empty token would accept anyone: remove the key instead")
        return value


class SigningConfig(_Section):
    """The key that signs each device's desired state (``hub keys init`` makes one)."""

    private_key: Path | None = Field(
        default=None,
        description="PEM (PKCS8) Ed25519 private key; relative paths are from the working directory. Without "
        "it the hub ingests and serves queries but publishes no desired state and refuses handler and "
        "subscription changes (409).",
    )


class DesiredConfig(_Section):
    """The signed desired state's lifetime (``hub.desired.renewal``)."""

    validity: Duration = Field(
        default=7 * 86400.0,
        ge=0,
        description="each document expires this long after it is signed; the hub re-signs the current one when "
        "less than half is left. 0 signs no expiry (for agents older than expires_at, which refuse the key).",
    )

    @field_validator("validity")
    @classmethod
    def _validity(cls, value: float) -> float:
        if 0 < value < 60:
            raise ValueError("at least 60s (or 0 for no expiry): devices need time to receive the renewal")
        return value


class ProvisioningConfig(_Section):
    """``hub ca``, ``hub device provision|revoke``: where the CA lives and how devices reach the cloud broker."""

    ca_dir: Path = Field(default=Path("./ca"), description="ca.key/ca.crt/crl.pem (hub ca init)")
    broker_host: str = Field(default="127.0.0.1", description="the cloud broker's address as devices see it")
    broker_port: int = Field(default=8883, ge=1, le=65535, description="TLS listener with client certificates")
    password_port: int = Field(default=8884, ge=1, le=65535, description="TLS listener with passwords (--password)")
    agent_data_dir: Path = Field(default=Path("/var/lib/edgefleet"), description="data_dir in the agent configs")


class HubConfig(EnvOverFile):
    """Everything ``hub serve`` needs. Build it with :func:`load_config`."""

    model_config = settings_config(ENV_PREFIX)

    broker: BrokerConfig = BrokerConfig()
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    signing: SigningConfig = SigningConfig()
    desired: DesiredConfig = DesiredConfig()
    provisioning: ProvisioningConfig = ProvisioningConfig()

    @classmethod
    def load(cls, path: str | Path | None = None) -> HubConfig:
        """:func:`load_config` of ``path``."""
        return load_config(path)


def load_config(path: str | Path | None, **overrides: Any) -> HubConfig:
    """Read ``path`` (TOML; None for defaults), ``overrides`` and the environment (``EDGEFLEET_HUB_*``, which wins);
    raise :class:`ConfigError` with one ``field.path: reason`` line per problem."""
    return load_settings(HubConfig, path, ConfigError, overrides)
