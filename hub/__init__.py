"""edgefleet hub: stores what the fleet's agents send, acknowledges it, and serves it over an HTTP API.

``hub serve`` wires the parts (:mod:`hub.service`): ingest (MQTT -> store -> ack), the store (SQLAlchemy)
and the API (FastAPI). The ``hub`` CLI talks to the API only, through :mod:`hub.cli.client`.
"""

__version__ = "0.1.0"
