"""The few MQTT 3.1.1 packets the paced publisher (``bench.clients pace``) needs, written straight to a socket.

Why not paho here: at 5,000 events/s QoS 1, paho's ``publish()`` and its PUBACK handling (which builds reason
code and property objects for every acknowledgement, also under 3.1.1) took 0.37 of a core on this 2-core
machine, more than the broker (0.22) and over half of the agent under test (0.56); at QoS 0 it took 0.21. A
real device's sensors do not run on its CPU, so that load only made the latency figures depend on the probe.
This publisher takes 0.10 of a core at QoS 1 and 0.07 at QoS 0. Everything that receives (the agent, the ceilings'
subscribers, ``mosquitto_sub``) stays a real client library; the broker checks these packets like any other.

A publisher of QoS 0 and 1 needs: CONNECT (clean session), PUBLISH, and reading back CONNACK, PUBACK and
PINGRESP. Packet ids are never reused while in flight: ``Publisher`` waits for acknowledgements first.
"""

from __future__ import annotations

import socket
import struct
import time

CONNACK = 0x20
PUBACK = 0x40
PINGRESP = 0xD0
PINGREQ = b"\xc0\x00"
MAX_PACKET_ID = 65535


class ProtocolError(RuntimeError):
    """The broker answered something a publisher does not expect (or refused the connection)."""


def remaining_length(n: int) -> bytes:
    """The fixed header's variable-length integer (1-4 bytes, 7 bits each, least significant first)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, keepalive: int) -> bytes:
    """CONNECT, protocol level 4 (3.1.1), clean session, no will, no credentials."""
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + utf8(client_id)
    return bytes([0x10]) + remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, packet_id: int = 0) -> bytes:
    """PUBLISH of ``payload``; ``topic`` is already length-prefixed (``utf8``), the id only at QoS 1."""
    header = topic + struct.pack("!H", packet_id) if qos else topic
    return bytes([0x30 | (qos << 1)]) + remaining_length(len(header) + len(payload)) + header + payload


class AckReader:
    """Splits what the broker sends a publisher into packets; counts PUBACKs."""

    def __init__(self) -> None:
        self._pending = b""
        self.acked = 0

    def feed(self, data: bytes) -> None:
        buf = self._pending + data
        pos = 0
        # Every packet a publisher gets has a remaining length under 128, so one byte of it.
        while len(buf) - pos >= 2:
            kind, length = buf[pos], buf[pos + 1]
            if len(buf) - pos < 2 + length:
                break
            if kind == PUBACK and length == 2:
                self.acked += 1
            elif kind != PINGRESP:
                raise ProtocolError(f"unexpected packet 0x{kind:02x} ({length} bytes) from the broker")
            pos += 2 + length
        self._pending = buf[pos:]


class Publisher:
    """One connection that publishes to one topic; ``send`` writes a group of payloads in one system call."""

    def __init__(self, host: str, port: int, topic: str, qos: int, *, client_id: str, keepalive: int = 60) -> None:
        if qos not in (0, 1):
            raise ValueError("QoS 0 or 1")
        self.qos = qos
        self._topic = utf8(topic)
        self._keepalive = keepalive
        self._sock = socket.create_connection((host, port), timeout=10)
        # Nagle off: a QoS 0 publisher gets no PUBACKs to carry TCP's acknowledgements back.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(connect_packet(client_id, keepalive))
        connack = self._recv_exactly(4)
        if connack[0] != CONNACK or connack[3] != 0:
            raise ProtocolError(f"connection refused: CONNACK {connack.hex()}")
        # Sends block (a stalled broker stalls the publisher, as it would a device's); reads never do.
        self._sock.settimeout(None)
        self._acks = AckReader()
        self._packet_id = 0
        self.sent = 0
        self._last_ping = time.monotonic()

    @property
    def in_flight(self) -> int:
        """QoS 1 publications the broker has not acknowledged yet."""
        return self.sent - self._acks.acked if self.qos else 0

    def send(self, payloads: list[bytes]) -> None:
        """Publish ``payloads`` in order, in one write; first wait for acknowledgements if packet ids would
        otherwise come round to one still in flight."""
        while self.in_flight + len(payloads) >= MAX_PACKET_ID:
            self.read(block=True)
        packets = []
        for payload in payloads:
            if self.qos:
                self._packet_id = self._packet_id % MAX_PACKET_ID + 1
            packets.append(publish_packet(self._topic, payload, self.qos, self._packet_id))
        self._sock.sendall(b"".join(packets))
        self.sent += len(payloads)
        if time.monotonic() - self._last_ping > self._keepalive / 2:
            self._sock.sendall(PINGREQ)
            self._last_ping = time.monotonic()

    def read(self, *, block: bool = False) -> None:
        """Take in what the broker sent (PUBACKs, PINGRESPs) without waiting, or wait for some with ``block``."""
        while True:
            try:
                data = self._sock.recv(65536, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not data:
                raise ProtocolError("the broker closed the connection")
            self._acks.feed(data)
            if block:
                return

    def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the acknowledgements still due."""
        deadline = time.monotonic() + timeout
        while self.in_flight and (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                self.read(block=True)
            except TimeoutError:
                break
        self._sock.settimeout(None)

    def close(self) -> None:
        try:
            self._sock.sendall(b"\xe0\x00")  # DISCONNECT
        finally:
            self._sock.close()

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ProtocolError("the broker closed the connection before CONNACK")
            data += chunk
        return data
