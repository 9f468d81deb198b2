"""edge-agent: runs containerized handlers for local MQTT events and forwards windowed aggregates."""

__version__ = "0.1.0"
