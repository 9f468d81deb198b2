"""The buffered socket under paho: exact bytes whatever the read sizes, EOF and 'nothing yet' passed through;
what paho sends leaving in one write, in order past a full socket, and a failed connection reported; and the
paho internals it relies on still there."""

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
    ours, _peer = pair
    buffered = BufferedSocket(ours)
    assert buffered.fileno() == ours.fileno()
    assert buffered.getsockname() == ours.getsockname()


class CountingSocket:
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def send(self, data: bytes | bytearray) -> int:
        self.sends.append(bytes(data))
        return len(data)


def test_what_paho_sends_leaves_in_one_write_on_flush() -> None:
    sock = CountingSocket()
    buffered = BufferedSocket(sock)
    for packet in (b"\x40\x02\x00\x01", b"\x30\x05\x00\x01ab", b"\x40\x02\x00\x02"):
        assert buffered.send(packet) == len(packet)
    assert sock.sends == []
    assert buffered.unsent == 14
    assert buffered.flush()
    assert sock.sends == [b"\x40\x02\x00\x01\x30\x05\x00\x01ab\x40\x02\x00\x02"]
    assert buffered.unsent == 0
    assert buffered.flush()  # nothing left: no write
    assert len(sock.sends) == 1


def test_a_full_socket_keeps_the_rest_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    buffered = BufferedSocket(ours)
    big = bytes(range(256)) * 8192  # 2 MiB, more than a socket pair holds
    buffered.send(big)
    assert not buffered.flush()
    assert 0 < buffered.unsent < len(big)
    buffered.send(b"tail")  # behind what is still waiting, not before it
    got = bytearray()
    while len(got) < len(big) + 4:
        got += peer.recv(1 << 20)
        buffered.flush()
    assert bytes(got) == big + b"tail"
    assert buffered.unsent == 0


def test_a_failed_connection_is_raised_on_flush_and_on_the_next_send(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    buffered = BufferedSocket(ours)
    peer.close()
    buffered.send(b"x")
    with pytest.raises((BrokenPipeError, ConnectionResetError)) as failed:
        buffered.flush()
    assert buffered.unsent == 0
    with pytest.raises((BrokenPipeError, ConnectionResetError)) as again:
        buffered.send(b"y")  # paho's next write learns it (and handles the connection as lost)
    assert again.value is failed.value


def test_close_sends_what_waits_first(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    buffered = BufferedSocket(ours)
    buffered.send(b"\xe0\x00")  # paho closes the socket right after writing its DISCONNECT
    buffered.close()
    assert peer.recv(2) == b"\xe0\x00"
    assert ours.fileno() == -1


def test_close_after_keep_reading_only_shuts_for_writing_until_released(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    buffered = BufferedSocket(ours)
    buffered.keep_reading_after_close()
    buffered.send(b"\xe0\x00")
    buffered.close()
    assert buffered.half_closed
    assert peer.recv(2) == b"\xe0\x00"
    assert peer.recv(2) == b""  # the peer sees our end closed
    peer.sendall(b"late")
    assert buffered.raw.recv(4) == b"late"  # and ours still reads what the peer sends meanwhile
    buffered.release()
    assert not buffered.half_closed
    assert ours.fileno() == -1


def test_close_after_keep_reading_closes_when_bytes_are_left(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    buffered = BufferedSocket(ours)
    buffered.keep_reading_after_close()
    peer.close()
    buffered.send(b"x")
    buffered.close()  # the write fails: nothing to wait for, the socket is closed
    assert not buffered.half_closed
    assert ours.fileno() == -1


def test_the_paho_internals_it_relies_on_are_there() -> None:
    # Socket creation goes through _create_socket, and the loop skips its wait while pending() says so.
    assert callable(getattr(mqtt.Client, "_create_socket", None))
    assert "self._sock = self._create_socket()" in inspect.getsource(mqtt.Client.reconnect)
    assert ".pending()" in inspect.getsource(mqtt.Client._loop)
    assert issubclass(BufferedClient, mqtt.Client)
    # Every PUBLISH reaches on_message through _handle_on_message(message), which BufferedClient replaces.
    assert "self._handle_on_message(message)" in inspect.getsource(mqtt.Client._handle_publish)
    assert "_userdata" in inspect.getsource(mqtt.Client._handle_on_message)
    # Writes: loop_write sends through _packet_write (which BufferedClient ends with its flush) before it asks
    # want_write() whether to stay registered for writability.
    loop_write = inspect.getsource(mqtt.Client.loop_write)
    assert "self._packet_write()" in loop_write
    assert loop_write.index("self._packet_write()") < loop_write.index("self.want_write()")


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
