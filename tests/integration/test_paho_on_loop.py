"""paho driven by the event loop (edge_agent/broker/on_loop.py) against a real mosquitto: every message whole and
in order, reading that stops on pause_reading and picks up what was already read on resume, acknowledgements
and publications written without a network thread, and a reconnection after the broker restarts."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.broker import on_loop
from edge_agent.broker.buffered import CHUNK, PACKETS_PER_TURN, BufferedClient
from edge_agent.broker.on_loop import PahoOnLoop
from edge_agent.broker.publisher import ConfirmedPublisher
from scripts.mosquitto import Mosquitto
from tests.support.running import wait_for

pytestmark = pytest.mark.integration


class Subscriber:
    """A BufferedClient on the running loop, subscribed to one topic, with manual acknowledgement."""

    def __init__(self, broker: Mosquitto, client_id: str, topic: str, qos: int, *, persistent: bool = False) -> None:
        self.client = BufferedClient(
            CallbackAPIVersion.VERSION2, client_id=client_id, manual_ack=True, clean_session=not persistent
        )
        self.driver = PahoOnLoop(self.client, name=client_id, reconnect_max=1.0)
        self.received: list[mqtt.MQTTMessage] = []
        self.connects = 0
        self.subscribed = asyncio.Event()
        self.on_message: Any = None

        def on_connect(client: mqtt.Client, *_a: Any) -> None:
            self.connects += 1
            client.subscribe(topic, qos=qos)

        def on_message(client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
            self.received.append(msg)
            if msg.qos:
                client.ack(msg.mid, msg.qos)
            if self.on_message is not None:
                self.on_message(msg)

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = on_message
        self.client.connect_async(broker.host, broker.port, keepalive=10)


def publisher(broker: Mosquitto, client_id: str) -> mqtt.Client:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    pub.max_inflight_messages_set(0)
    pub.max_queued_messages_set(0)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    return pub


@pytest.mark.parametrize("qos", [0, 1])
async def test_every_message_arrives_whole_and_in_order(device_broker: Mosquitto, topic_prefix: str, qos: int) -> None:
    topic = f"{topic_prefix}/onloop/q{qos}"
    sizes = [10] * 3000 + [CHUNK * 3 + 17] + [200] * 2000 + [CHUNK - 3, CHUNK + 5] + [1] * 500
    messages = [(i.to_bytes(4, "big") + bytes([i % 251]) * size) for i, size in enumerate(sizes)]
    sub = Subscriber(device_broker, f"{topic_prefix}-onloop-{qos}", topic, qos)
    sub.driver.start()
    pub = publisher(device_broker, f"{topic_prefix}-onloop-pub-{qos}")
    try:
        await asyncio.wait_for(sub.subscribed.wait(), 10)
        infos = [pub.publish(topic, payload, qos=1) for payload in messages]
        await asyncio.to_thread(lambda: [info.wait_for_publish(timeout=30) for info in infos])
        await wait_for(lambda: len(sub.received) == len(messages), timeout=60, what="every message")
    finally:
        pub.disconnect()
        pub.loop_stop()
        await sub.driver.aclose()
    assert [bytes(m.payload) for m in sub.received] == messages


async def test_pause_stops_reading_and_resume_picks_up_what_was_read(
    device_broker: Mosquitto, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}/onloop/pause"
    total, pause_at = 20_000, 1_000
    sub = Subscriber(device_broker, f"{topic_prefix}-onloop-pause", topic, 1)

    def pause_once(msg: mqtt.MQTTMessage) -> None:
        if len(sub.received) == pause_at:
            sub.driver.pause_reading()

    sub.on_message = pause_once
    sub.driver.start()
    pub = publisher(device_broker, f"{topic_prefix}-onloop-pause-pub")
    try:
        await asyncio.wait_for(sub.subscribed.wait(), 10)
        infos = [pub.publish(topic, b"%d" % i, qos=1) for i in range(total)]
        await asyncio.to_thread(lambda: [info.wait_for_publish(timeout=30) for info in infos])
        await wait_for(lambda: len(sub.received) >= pause_at, timeout=30, what="the first messages")
        # Everything is published and the loop keeps turning: paused, nothing more is read than the turn that
        # paused had already decoded.
        for _ in range(200):
            await asyncio.sleep(0)
        held = len(sub.received)
        assert held <= pause_at + PACKETS_PER_TURN
        assert held < total
        sub.driver.resume_reading()
        await wait_for(lambda: len(sub.received) == total, timeout=60, what="the rest after resume")
    finally:
        pub.disconnect()
        pub.loop_stop()
        await sub.driver.aclose()
    assert [int(m.payload) for m in sub.received] == list(range(total))


async def test_reconnects_after_the_broker_restarts_and_resumes_its_session(topic_prefix: str) -> None:
    topic = f"{topic_prefix}/onloop/restart"
    with Mosquitto() as broker:
        sub = Subscriber(broker, f"{topic_prefix}-onloop-restart", topic, 1, persistent=True)  # as the intake
        sub.driver.start()
        try:
            await asyncio.wait_for(sub.subscribed.wait(), 10)
            await asyncio.to_thread(broker.restart)
            await wait_for(lambda: sub.connects >= 2, timeout=20, what="the reconnection")
            got = threading.Event()
            sub.on_message = lambda _m: got.set()
            pub = publisher(broker, f"{topic_prefix}-onloop-restart-pub")
            try:
                pub.publish(topic, b"after", qos=1).wait_for_publish(timeout=10)
                await wait_for(got.is_set, timeout=10, what="a message after the restart")
            finally:
                pub.disconnect()
                pub.loop_stop()
        finally:
            await sub.driver.aclose()
    assert sub.received[-1].payload == b"after"


async def test_a_publication_made_while_the_broker_is_down_is_confirmed_after_it_returns(topic_prefix: str) -> None:
    """QoS 1 publications queued while disconnected go out after the new CONNECT (the MQTT handshake runs on the
    loop, so nothing the loop queues can precede it) and resolve their futures; a clean close fails the rest."""
    topic = f"{topic_prefix}/onloop/outage"
    with Mosquitto() as broker:
        sub = Subscriber(broker, f"{topic_prefix}-onloop-outage-sub", topic, 1, persistent=True)
        sub.driver.start()
        publisher = ConfirmedPublisher(host=broker.host, port=broker.port, client_id=f"{topic_prefix}-pub", v5=False)
        await publisher.start(asyncio.get_running_loop())
        try:
            await asyncio.wait_for(sub.subscribed.wait(), 10)
            first = publisher.publish(topic, b"before", 1)
            assert first is not None
            await asyncio.wait_for(first, 10)
            await asyncio.to_thread(broker.stop)
            await wait_for(lambda: not publisher._driver.attached, timeout=10, what="the publisher sees the outage")
            during = [publisher.publish(topic, b"during-%d" % i, 1) for i in range(20)]
            await asyncio.to_thread(broker.start)
            for fut in during:
                assert fut is not None
                await asyncio.wait_for(fut, 20)
            await wait_for(lambda: len(sub.received) >= 21, timeout=20, what="the subscriber gets all of them")
            await asyncio.to_thread(broker.stop)
            await wait_for(lambda: not publisher._driver.attached, timeout=10, what="the second outage")
            pending = publisher.publish(topic, b"unconfirmed", 1)  # no PUBACK can come before the close
        finally:
            await publisher.aclose()
            await sub.driver.aclose()
    assert {bytes(m.payload) for m in sub.received} >= {b"before", *(b"during-%d" % i for i in range(20))}
    assert pending is not None
    with pytest.raises(Exception, match="closed before the PUBACK"):
        await asyncio.wait_for(pending, 1)


async def test_a_turns_publications_leave_whole_and_in_order_past_a_full_socket(
    device_broker: Mosquitto, topic_prefix: str
) -> None:
    """10 MB published in one loop turn: gathered into one write, more than the socket takes, so the rest leaves
    as the socket drains (the selector's writer), in order; then a second turn's publications behind it."""
    topic = f"{topic_prefix}/onloop/gather"
    received: list[bytes] = []
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{topic_prefix}-gather-sub")
    sub.on_message = lambda _c, _u, msg: received.append(bytes(msg.payload))
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(device_broker.host, device_broker.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    client = BufferedClient(CallbackAPIVersion.VERSION2, client_id=f"{topic_prefix}-gather-pub")
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    connected = asyncio.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect_async(device_broker.host, device_broker.port)
    driver = PahoOnLoop(client, name="gather", reconnect_max=1.0)
    driver.start()
    first = [i.to_bytes(4, "big") + bytes([i % 251]) * 2000 for i in range(5000)]
    second = [b"after-%d" % i for i in range(100)]
    try:
        assert await asyncio.to_thread(subscribed.wait, 10)
        await asyncio.wait_for(connected.wait(), 10)
        infos = [client.publish(topic, payload, qos=1) for payload in first]
        assert client.want_write()
        await asyncio.sleep(0)  # the turn ends: its flush writes what the socket takes
        infos += [client.publish(topic, payload, qos=1) for payload in second]
        await wait_for(lambda: len(received) >= len(first) + len(second), timeout=60, what="every publication")
        await wait_for(lambda: all(info.is_published() for info in infos), timeout=30, what="every PUBACK")
        assert not client.want_write()
    finally:
        await driver.aclose()
        sub.disconnect()
        sub.loop_stop()
    assert received == first + second


async def test_aclose_waits_for_the_broker_to_close_and_no_longer_than_close_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After our DISCONNECT, aclose returns once the peer closes its end; a peer that never does (here a server
    that accepts the session and then only reads) holds it for CLOSE_WAIT, not longer."""
    monkeypatch.setattr(on_loop, "CLOSE_WAIT", 0.5)
    got_disconnect = asyncio.Event()
    released = asyncio.Event()
    peer = {"closes": True}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)  # CONNECT's fixed header (its body is shorter than 128 bytes)
        writer.write(b"\x20\x02\x00\x00")  # CONNACK: accepted, no session
        while (data := await reader.read(1024)) and b"\xe0\x00" not in data:
            pass
        got_disconnect.set()
        if not peer["closes"]:
            await released.wait()  # a broker that does not close its end
        writer.close()

    async def aclose_takes(port: int) -> float:
        got_disconnect.clear()
        client = BufferedClient(CallbackAPIVersion.VERSION2, client_id="close-wait")
        connected = asyncio.Event()
        client.on_connect = lambda *_a: connected.set()
        client.connect_async("127.0.0.1", port)
        driver = PahoOnLoop(client, name="close-wait", reconnect_max=1.0)
        driver.start()
        await asyncio.wait_for(connected.wait(), 10)
        started = time.monotonic()
        await driver.aclose()
        assert got_disconnect.is_set()
        return time.monotonic() - started

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        assert await aclose_takes(port) < 0.4
        peer["closes"] = False
        assert 0.5 <= await aclose_takes(port) < 1.5
    finally:
        released.set()
        server.close()
        await server.wait_closed()
