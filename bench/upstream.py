"""Upstream reduction: bytes the agent sends to the cloud broker over the bytes of the raw events it aggregated.

A stand-in for the hub on the cloud broker counts every message the agent publishes under its device topics
(status and aggregates, at their MQTT wire size) and acknowledges each aggregate batch as the hub would, so
the agent never resends. Publishing starts just after a 10 s boundary and stops just before one, so every
event falls in a window that closes (and is forwarded) within the measurement.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker
import paho.mqtt.client as mqtt

from bench.agentproc import AgentProcess
from bench.pipeline import bench_document
from bench.procs import Helper
from edge_protocol.messages import Ack, ranges_of
from edge_protocol.topics import Topics
from scripts.mosquitto import Mosquitto

TOPIC = "bench/up/t"


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2_097_152 else 4


def publish_wire_bytes(topic: str, payload: bytes, qos: int) -> int:
    """Size of an MQTT 5 PUBLISH as sent: fixed header, topic, packet id (QoS > 0), empty properties, payload."""
    rest = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + len(payload)
    return 1 + _varint_len(rest) + rest


class HubStub:
    """Counts what the agent sends to the cloud; acks aggregate batches like the hub."""

    def __init__(self, broker: Mosquitto, device_id: str) -> None:
        self._topics = Topics()
        self._device = device_id
        self.lock = threading.Lock()
        self.bytes: dict[str, int] = {}
        self.messages = 0
        self.events = 0
        self.records = 0
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(f"{self._topics.prefix}/devices/{device_id}/+", 1)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("hub stand-in not subscribed")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        channel = msg.topic.rsplit("/", 1)[-1]
        if channel in ("acks", "desired"):
            return  # ours, not the agent's
        with self.lock:
            self.bytes[channel] = self.bytes.get(channel, 0) + publish_wire_bytes(msg.topic, msg.payload, msg.qos)
            self.messages += 1
        if channel == "aggregates":
            batch = json.loads(msg.payload)
            seqs = [r["seq"] for r in batch["records"]]
            with self.lock:
                self.records += len(seqs)
                self.events += sum(int(r["result"]["events"]) for r in batch["records"])
            ack = Ack(device=self._device, ranges=ranges_of(seqs))
            self._client.publish(self._topics.acks(self._device), ack.model_dump_json().encode(), 1)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def upstream(
    docker_client: docker.DockerClient, device_id: str, seconds: int, rate: float = 1000.0, window: int = 10
) -> dict[str, Any]:
    """Run a second agent with 10 s windows and a cloud broker; publish ``rate``/s for ``seconds``."""
    with Mosquitto() as local, Mosquitto() as cloud, tempfile.TemporaryDirectory(prefix="bench-up-") as tmp:
        subs = [{"name": "up", "topic": "bench/up/#", "handler": "pt", "qos": 1, "window": {"size": f"{window}s"}}]
        config = bench_document(device_id, Path(tmp), local.port, cloud_port=cloud.port, subscriptions=subs)
        config["handlers"] = config["handlers"][:1]
        hub = HubStub(cloud, device_id)
        agent = AgentProcess(config, docker_client=docker_client)
        try:
            agent.start()
            boundary = (time.time() // window + 1) * window
            if boundary - time.time() < 1.0:
                boundary += window
            with Helper(
                "pace",
                "--port",
                str(local.port),
                "--topic",
                TOPIC,
                "--qos",
                "1",
                "--rate",
                str(rate),
                "--seconds",
                str(seconds - 0.3),
                "--at",
                str(boundary + 0.05),
            ) as pub:
                pub.read(timeout=window + 15)
                sent = pub.read(timeout=seconds + 30)
            deadline = boundary + seconds + 15
            while hub.events < sent["sent"] and time.time() < deadline:
                time.sleep(0.1)
            with hub.lock:  # before the agent's offline status on the way out
                by_channel, events, records = dict(hub.bytes), hub.events, hub.records
        finally:
            agent.stop()
            hub.close()
    total = sum(by_channel.values())
    return {
        "rate": rate,
        "window_s": window,
        "seconds": seconds,
        "events_sent": sent["sent"],
        "events_in_aggregates": events,
        "records": records,
        "raw_payload_bytes": sent["bytes"],
        "upstream_bytes": total,
        "upstream_by_channel": by_channel,
        "ratio": total / sent["bytes"],
        "ratio_aggregates_only": by_channel.get("aggregates", 0) / sent["bytes"],
    }
