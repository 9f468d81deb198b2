"""The buffered socket under paho: exact bytes whatever the read sizes, EOF and 'nothing yet' passed through,
and the two paho internals it relies on still there."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from edge_agent.broker.buffered import CHUNK, BufferedClient, BufferedSocket


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_small_reads_come_from_one_large_read(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    data = bytes(range(256)) * 40  # 10,240 bytes
    peer.sendall(data)
    buffered = BufferedSocket(ours)
    got = bytearray()
    sizes = [1, 1, 2, 100, 5000, 1, 7000]
    for size in sizes:
        chunk = buffered.recv(size)
        assert 0 < len(chunk) <= size
        got += chunk
        if len(got) == len(data):
            break
    assert bytes(got) == data
    assert buffered.pending() == 0
    with pytest.raises(BlockingIOError):
        buffered.recv(1)  # nothing buffered, nothing on the socket: as the socket itself says


def test_pending_counts_what_was_read_but_not_handed_out(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    peer.sendall(b"abcdef")
    buffered = BufferedSocket(ours)
    assert buffered.recv(2) == b"ab"
    assert buffered.pending() == 4
    assert buffered.recv(10) == b"cdef"
    assert buffered.pending() == 0


def test_a_read_larger_than_what_is_there_passes_straight_through(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    peer.sendall(b"xyz")
    buffered = BufferedSocket(ours)
    assert buffered.recv(CHUNK) == b"xyz"
    assert buffered.pending() == 0


def test_end_of_stream_is_an_empty_read(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    peer.sendall(b"12")
    peer.shutdown(socket.SHUT_WR)
    buffered = BufferedSocket(ours)
    assert buffered.recv(1) == b"1"
    assert buffered.recv(1) == b"2"
    assert buffered.recv(1) == b""


def test_everything_else_goes_to_the_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    buffered = BufferedSocket(ours)
    assert buffered.fileno() == ours.fileno()
    assert buffered.send(b"hi") == 2
    assert peer.recv(2) == b"hi"


def test_the_paho_internals_it_relies_on_are_there() -> None:
    # Socket creation goes through _create_socket, and the loop skips its wait while pending() says so.
    assert callable(getattr(mqtt.Client, "_create_socket", None))
    assert "self._sock = self._create_socket()" in inspect.getsource(mqtt.Client.reconnect)
    assert ".pending()" in inspect.getsource(mqtt.Client._loop)
    assert issubclass(BufferedClient, mqtt.Client)
    # Every PUBLISH reaches on_message through _handle_on_message(message), which BufferedClient replaces.
    assert "self._handle_on_message(message)" in inspect.getsource(mqtt.Client._handle_publish)
    assert "_userdata" in inspect.getsource(mqtt.Client._handle_on_message)


def test_messages_go_straight_to_on_message() -> None:
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="t", userdata="ud")
    got: list[tuple[object, bytes]] = []
    client.on_message = lambda _c, userdata, msg: got.append((userdata, msg.payload))
    message = mqtt.MQTTMessage(mid=1, topic=b"a/b")
    message.payload = b"x"
    client._handle_on_message(message)
    assert got == [("ud", b"x")]
    with pytest.raises(NotImplementedError):
        client.message_callback_add("a/#", lambda *_: None)
