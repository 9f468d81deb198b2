"""The real parts the rest of the suite stands on: mosquitto fixtures and handler containers on the engine."""

from __future__ import annotations

import json
import queue
import socket
import time
from collections.abc import Callable

import docker
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from scripts.mosquitto import Mosquitto
from tests.support.engine import STDOUT, demux, raw_socket, remove_labelled

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


def _client(broker: Mosquitto) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_broker_delivers_qos1_between_two_clients(device_broker: Mosquitto, topic_prefix: str) -> None:
    topic = f"{topic_prefix}/sensors/t1"
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed: queue.Queue[int] = queue.Queue()
    subscriber = _client(device_broker)
    publisher = _client(device_broker)
    try:
        subscriber.on_message = lambda _c, _u, msg: received.put(msg)
        subscriber.on_subscribe = lambda _c, _u, mid, _codes, _p: subscribed.put(mid)
        _, sub_mid = subscriber.subscribe(topic, qos=1)
        assert subscribed.get(timeout=TIMEOUT) == sub_mid

        info = publisher.publish(topic, b'{"f": 98.6}', qos=1)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published()

        msg = received.get(timeout=TIMEOUT)
        assert (msg.topic, msg.payload, msg.qos) == (topic, b'{"f": 98.6}', 1)
    finally:
        for client in (subscriber, publisher):
            client.disconnect()
            client.loop_stop()


def test_fresh_broker_keeps_its_port_across_kill_and_restart(fresh_broker: Callable[..., Mosquitto]) -> None:
    broker = fresh_broker()
    port = broker.port
    broker.kill()
    assert not broker.running
    broker.restart()
    assert (broker.running, broker.port) == (True, port)


def _event(i: int) -> dict[str, object]:
    # Every tenth payload is not a temperature: the handler must answer it with an error, not die.
    if i % 10 == 9:
        payload: object = {"f": "warm"}
    elif i % 2:
        payload = {"f": 32 + 1.8 * i}
    else:
        payload = 32 + 1.8 * i
    return {"kind": "event", "id": i, "topic": f"sensors/{i}", "payload": payload, "ts": 1_700_000_000.0 + i}


def test_temp_c_container_answers_a_batch_like_the_agent_sees_it(
    docker_client: docker.DockerClient, handler_images: dict[str, str], device_id: str
) -> None:
    container = docker_client.containers.create(
        handler_images["edgefleet/temp-c:dev"],
        stdin_open=True,
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=64,
        mem_limit="64m",
        user="65534:65534",
        environment={"THRESHOLD_C": "50"},
        labels={"edgefleet.device": device_id, "edgefleet.handler": "temp-c"},
    )
    try:
        # Attach before start, or the first replies could be written before anyone listens.
        sock = raw_socket(container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}))
        sock.settimeout(TIMEOUT)
        container.start()

        batch = [_event(i) for i in range(100)] + [{"kind": "ping", "id": "p1"}]
        sock.sendall("".join(json.dumps(line) + "\n" for line in batch).encode())

        replies: list[dict[str, object]] = []
        stdout, stderr = bytearray(), bytearray()
        deadline = time.monotonic() + TIMEOUT
        for stream, data in demux(sock):
            (stdout if stream == STDOUT else stderr).extend(data)
            while b"\n" in stdout:
                line, _, rest = bytes(stdout).partition(b"\n")
                stdout[:] = rest
                replies.append(json.loads(line))
            if len(replies) >= len(batch) or time.monotonic() > deadline:
                break

        assert len(replies) == len(batch), f"replies: {replies[-3:]}, stderr: {stderr.decode()}"
        assert [r["id"] for r in replies] == [line["id"] for line in batch]
        for i, reply in enumerate(replies[:100]):
            if i % 10 == 9:
                assert reply["kind"] == "error"
                assert str(reply["error"]).startswith("ValueError: expected a number of degrees Fahrenheit")
            else:
                assert reply == {"kind": "result", "id": i, "values": {"c": pytest.approx(i), "hot": i > 50, "v": 1}}
        assert replies[100] == {"kind": "pong", "id": "p1"}
        assert not stderr, stderr.decode()

        # The SDK exits 0 at EOF: closing our half of the attach stream closes the handler's stdin.
        sock.shutdown(socket.SHUT_WR)
        assert container.wait(timeout=TIMEOUT)["StatusCode"] == 0
        sock.close()
    finally:
        container.remove(force=True)
    labelled = docker_client.containers.list(all=True, filters={"label": f"edgefleet.device={device_id}"})
    assert labelled == []


def test_cleanup_by_label_touches_only_that_device(
    docker_client: docker.DockerClient, handler_images: dict[str, str], device_id: str
) -> None:
    image = handler_images["edgefleet/passthrough:dev"]
    mine = [docker_client.containers.create(image, labels={"edgefleet.device": device_id}) for _ in range(2)]
    other = docker_client.containers.create(image, labels={"edgefleet.device": f"{device_id}-other"})
    try:
        assert remove_labelled(docker_client, device_id) == len(mine)
        remaining = {c.id for c in docker_client.containers.list(all=True)}
        assert other.id in remaining
        assert not remaining & {c.id for c in mine}
    finally:
        other.remove(force=True)
