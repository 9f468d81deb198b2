"""The one builder of the tests' agent configs: the document (TOML for the CLI) and the validated config.

Whatever a test does not pass has the agent's own default, so a test reads as what it depends on. Tests that
wait on recovery say so with the presets below rather than inheriting timings they never asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, load_config

QUICK_CLOUD: dict[str, Any] = {"resend_after": "2s", "reconnect_max": "2s"}
"""``cloud_extra`` of a test that waits on the uplink's recovery: resends and reconnections within seconds."""

QUICK_RESTARTS: dict[str, Any] = {"restart_backoff": "0.2s", "restart_max": "2s", "max_failures": 3}
"""``runtime`` of a test whose handlers crash: restarts at once, marked failed after three."""

SHORT_GRACE = "5s"
"""``grace_period`` that bounds how long a test's agent drains at shutdown."""


def agent_document(
    *,
    device_id: str,
    data_dir: Path,
    device_port: int,
    cloud_port: int | None = None,
    prefix: str | None = None,
    handlers: list[dict[str, Any]] | None = None,
    subscriptions: list[dict[str, Any]] | None = None,
    cloud_extra: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An agent's config document; without ``cloud_port`` the cloud link is off. ``cloud_extra`` adds to the
    ``[cloud]`` table, ``extra`` to the top level (e.g. ``runtime=QUICK_RESTARTS``, ``status={...}``)."""
    cloud: dict[str, Any] = {"enabled": False} if cloud_port is None else {"port": cloud_port, **(cloud_extra or {})}
    if prefix is not None:
        # The prefix also names the dead-letter topics on the device broker, so it is set even without a cloud.
        cloud["prefix"] = prefix
    local_broker = {"port": device_port, **extra.pop("local_broker", {})}
    return {
        "device_id": device_id,
        "data_dir": str(data_dir),
        **extra,
        "local_broker": local_broker,
        "cloud": cloud,
        "handlers": handlers or [],
        "subscriptions": subscriptions or [],
    }


def agent_config(**kwargs: Any) -> AgentConfig:
    """:func:`agent_document`, validated, for an in-process agent (``tests.support.running.running_agent``)."""
    return load_config(None, **agent_document(**kwargs))
