"""Agent configs of the tests: the document (TOML for the CLI) and the validated config (in-process agents)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, load_config


def agent_toml(
    *,
    device_id: str,
    data_dir: Path,
    device_port: int,
    cloud_port: int | None,
    prefix: str,
    handlers: list[dict[str, Any]],
    subscriptions: list[dict[str, Any]],
    cloud_extra: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An agent's config document (TOML for the CLI, or :func:`agent_config` for in-process agents);
    ``cloud_extra`` adds to its ``[cloud]`` table."""
    # The prefix also names the dead-letter topics on the device broker, so it is set even without a cloud.
    cloud: dict[str, Any] = {"enabled": False, "prefix": prefix}
    if cloud_port is not None:
        cloud = {"port": cloud_port, "prefix": prefix, "resend_after": "2s", "reconnect_max": "2s"}
        cloud.update(cloud_extra or {})
    return {
        "device_id": device_id,
        "data_dir": str(data_dir),
        "grace_period": "5s",
        **extra,
        "local_broker": {"port": device_port},
        "cloud": cloud,
        "handlers": handlers,
        "subscriptions": subscriptions,
    }


def agent_config(**kwargs: Any) -> AgentConfig:
    """:func:`agent_toml`'s config for ``tests.support.running.running_agent``."""
    return load_config(None, **agent_toml(**kwargs))
