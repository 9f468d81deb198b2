"""What most integration and fault tests assemble by hand before starting an agent: the ``rig`` fixture's value."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from scripts.mosquitto import Mosquitto
from tests.support.agent_config import agent_config, agent_document


@dataclasses.dataclass(frozen=True)
class Rig:
    """The device broker, this test's device id and topic prefix, and the agent's data dir.

    Its builders fill those four into an agent config; whatever else the test passes overrides or adds to them.
    """

    broker: Mosquitto
    device_id: str
    prefix: str
    data_dir: Path

    def with_broker(self, broker: Mosquitto) -> Rig:
        """The same rig on another device broker (one the test kills or proxies)."""
        return dataclasses.replace(self, broker=broker)

    def _defaults(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        base = {
            "device_id": self.device_id,
            "data_dir": self.data_dir,
            "device_port": self.broker.port,
            "prefix": self.prefix,
        }
        return {**base, **kwargs}

    def agent_document(self, **kwargs: Any) -> dict[str, Any]:
        """:func:`tests.support.agent_config.agent_document` for this rig (TOML for ``agent_process``)."""
        return agent_document(**self._defaults(kwargs))

    def agent_config(self, **kwargs: Any) -> AgentConfig:
        """:func:`tests.support.agent_config.agent_config` for this rig (for ``running_agent``)."""
        return agent_config(**self._defaults(kwargs))
