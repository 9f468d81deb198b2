"""The buffered paho client against a real mosquitto: many small messages and ones larger than a read chunk
arrive whole, in order, and acknowledgements still flow while it decodes many packets per loop turn."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.broker.buffered import CHUNK, BufferedClient
from scripts.mosquitto import Mosquitto
from tests.support.running import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("qos", [0, 1])
async def test_buffered_client_receives_every_message_whole_and_in_order(
    device_broker: Mosquitto, topic_prefix: str, qos: int
) -> None:
    topic = f"{topic_prefix}/buffered/q{qos}"
    sizes = [10] * 3000 + [CHUNK * 3 + 17] + [200] * 2000 + [CHUNK - 3, CHUNK + 5] + [1] * 500
    messages = [(i.to_bytes(4, "big") + bytes([i % 251]) * size) for i, size in enumerate(sizes)]
    received: list[bytes] = []
    subscribed = threading.Event()
    done = threading.Event()

    def on_connect(client: mqtt.Client, _ud: Any, _flags: Any, _rc: Any, _props: Any) -> None:
        client.subscribe(topic, qos=qos)

    def on_subscribe(*_args: Any) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        received.append(bytes(msg.payload))
        if len(received) == len(messages):
            done.set()

    sub = BufferedClient(CallbackAPIVersion.VERSION2, client_id=f"{topic_prefix}-buffered-{qos}")
    sub.on_connect, sub.on_subscribe, sub.on_message = on_connect, on_subscribe, on_message
    sub.connect(device_broker.host, device_broker.port)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{topic_prefix}-buffered-pub-{qos}")
    pub.connect(device_broker.host, device_broker.port)
    pub.loop_start()
    try:
        await wait_for(subscribed.is_set, timeout=10, what="the subscription")
        infos = [pub.publish(topic, payload, qos=1) for payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
        await wait_for(done.is_set, timeout=60, what="every message", detail=lambda: f"{len(received)} received")
    finally:
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()
    assert received == messages
