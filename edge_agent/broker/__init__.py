"""The agent's only contact with MQTT libraries: device-broker intake (``local``, paho), confirmed local
publishes on their own connection (``publisher``, paho), and the cloud link (``cloud``, aiomqtt)."""

from edge_agent.broker.cloud import CloudBroker, client_tls
from edge_agent.broker.local import Incoming, LocalBroker

__all__ = ["CloudBroker", "Incoming", "LocalBroker", "client_tls"]
