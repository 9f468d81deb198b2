"""The benchmark's paced publisher (``bench.mqtt_wire``, ``bench.clients pace``) against a real mosquitto: what it
sends arrives whole and in order at a paho subscriber, at QoS 0 and 1, and every QoS 1 publication is
acknowledged, also across the packet id's wrap-around."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.mqtt_wire import AckReader, ProtocolError, Publisher, remaining_length
from scripts.mosquitto import Mosquitto
from tests.support.mqtt_clients import Subscriber


def wait_for(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def raw(payload: bytes | bytearray) -> list[bytes]:
    return [bytes(payload)]


@pytest.mark.parametrize("qos", [0, 1])
def test_payloads_of_every_length_class_arrive_in_order(device_broker: Mosquitto, topic_prefix: str, qos: int) -> None:
    # 1-, 2- and 3-byte remaining lengths (below 128, below 16,384, above).
    payloads = [b"a", b"b" * 200, b"c" * 20_000, *(b"%d" % i for i in range(50))]
    with Subscriber(device_broker, f"{topic_prefix}/#", raw) as sub:
        pub = Publisher(device_broker.host, device_broker.port, f"{topic_prefix}/p", qos, client_id=topic_prefix)
        try:
            pub.send(payloads[:3])
            pub.send(payloads[3:])
            pub.settle(10.0)
            assert pub.sent == len(payloads)
            assert pub.in_flight == 0
        finally:
            pub.close()
        wait_for(lambda: len(sub.received()) >= len(payloads))
        assert sub.received() == payloads


def test_packet_ids_wrap_around_without_zero(device_broker: Mosquitto, topic_prefix: str) -> None:
    with Subscriber(device_broker, f"{topic_prefix}/#", raw) as sub:
        pub = Publisher(device_broker.host, device_broker.port, f"{topic_prefix}/p", 1, client_id=topic_prefix)
        try:
            pub._packet_id = 65_530  # the next ten ids are 65531..65535, then 1..5
            pub.send([b"%d" % i for i in range(10)])
            pub.settle(10.0)
            # mosquitto closes the connection of a client that sends packet id 0 at QoS 1: no PUBACKs then.
            assert pub.in_flight == 0
        finally:
            pub.close()
        wait_for(lambda: len(sub.received()) >= 10)
        assert sub.received() == [b"%d" % i for i in range(10)]


def test_pace_sends_each_event_once_with_its_send_time(device_broker: Mosquitto, topic_prefix: str) -> None:
    with Subscriber(device_broker, f"{topic_prefix}/#", lambda p: [json.loads(p)]) as sub:
        run = subprocess.run(
            [sys.executable, "-m", "bench.clients", "pace", "--port", str(device_broker.port),
             "--topic", f"{topic_prefix}/lat", "--qos", "1", "--rate", "2000", "--seconds", "0.5"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        started, done = (json.loads(line) for line in run.stdout.splitlines())
        assert done["sent"] == 1000
        assert done["unacked"] == 0
        wait_for(lambda: len(sub.received()) >= 1000)
        events = sub.received()
    assert [e["seq"] for e in events] == list(range(1000))
    stamps = [e["t"] for e in events]
    assert stamps == sorted(stamps)
    assert started["started"] <= stamps[0] <= stamps[-1] <= done["end"]
    # Paced, not sent at once: the 1,000 events took about the 0.5 s they were given.
    assert 0.4 < stamps[-1] - stamps[0] < 2.0


def test_the_ack_reader_splits_packets_across_reads_and_rejects_the_unexpected() -> None:
    reader = AckReader()
    stream = b"\x40\x02\x00\x01" + b"\xd0\x00" + b"\x40\x02\x00\x02"
    for i in range(len(stream)):  # one byte at a time
        reader.feed(stream[i : i + 1])
    assert reader.acked == 2
    with pytest.raises(ProtocolError, match="0x30"):
        reader.feed(b"\x30\x03\x00\x01x")


def test_remaining_length_encoding() -> None:
    assert [remaining_length(n) for n in (0, 127, 128, 16_383, 16_384)] == [
        b"\x00", b"\x7f", b"\x80\x01", b"\xff\x7f", b"\x80\x80\x01",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="out of range"):
        remaining_length(268_435_456)
