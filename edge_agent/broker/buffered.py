"""A paho client that reads the broker's socket in large chunks and decodes every packet they hold at once, and
writes what one ``loop_write`` sends in one system call.

paho 2.2 reads one packet per ``loop_read``: ``recv`` calls of one byte for the command, one per length byte and
one for the body (docs/performance.md: 46 µs per event in paho's thread, against 27 µs for a bare subscriber
doing everything). Here one ``recv`` of up to 64 KiB feeds paho's packet decoder from memory, and one
``loop_read`` decodes every complete packet the chunk holds (up to a bound, so that acknowledgements and
keepalives still go out, and other work on the event loop gets its turn).

paho writes each packet with a ``send`` of its own: at 5,000 events/s the agent's acknowledgements and its
handlers' publications made about 10,000 small writes a second, each one waking the broker. Here the packets of
one ``loop_write`` (everything a loop turn queued, see edge_agent/broker/on_loop.py) are gathered and leave in one
``send``; what the socket does not take stays in order in front of later packets until it is writable again.

Bytes read but not decoded yet are invisible to a selector watching the socket: ``buffered_pending()`` tells
whoever drives the client (edge_agent/broker/on_loop.py) to read again without waiting; paho's own network loop
asks the socket's ``pending()`` for the same reason (TLS buffers). It relies on paho's ``_create_socket``
(which paho's own websocket transport wraps the same way); ``paho-mqtt<3`` is pinned for that, and
tests/unit/agent/test_buffered_socket.py fails if it changes.
"""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

CHUNK = 65536
"""Bytes read from the socket at once: a few hundred small events."""
PACKETS_PER_TURN = 1000
"""Packets decoded per ``loop_read`` before the loop gets to its writes (acknowledgements), keepalive and other
work."""


class BufferedSocket:
    """The broker connection's socket with a read buffer; everything but ``recv`` goes to the socket."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._out = bytearray()
        """Bytes paho handed over (``send``) that have not left yet, in order."""
        self._failed: OSError | None = None
        self._keep_reading = False
        self.half_closed = False
        """Shut for writing by :meth:`close` (see :meth:`keep_reading_after_close`), not closed yet."""

    def recv(self, size: int) -> bytes:
        """At most ``size`` bytes: from the buffer, else from one large read of the socket.

        Like the socket's: raises BlockingIOError when nothing is there, returns b"" when the peer closed.
        """
        if self._pos >= len(self._buf):
            data: bytes = self._sock.recv(CHUNK)
            if len(data) <= size:
                return data
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + size, len(self._buf))
        return self._buf[start : self._pos]

    def send(self, data: bytes | bytearray) -> int:
        """Take ``data`` whole, for :meth:`flush`; a failure of an earlier flush is raised here, so that paho's
        next write tells it the connection is lost."""
        if self._failed is not None:
            raise self._failed
        self._out += data
        return len(data)

    def flush(self) -> bool:
        """Send what was handed over, as far as the socket takes it; True when nothing is left.

        Raises the OSError of a connection that failed (and keeps it for the next ``send``); what was left is then
        dropped, as paho drops what it had written to a connection that failed."""
        out = self._out
        while out:
            try:
                sent = self._sock.send(out)
            except BlockingIOError:
                return False
            except OSError as exc:
                self._failed = exc
                out.clear()
                raise
            del out[:sent]
        return True

    @property
    def unsent(self) -> int:
        return len(self._out)

    def keep_reading_after_close(self) -> None:
        """Let the next :meth:`close` only shut the socket for writing once everything left, so that its owner can
        wait for the peer to close its end (:meth:`release` then closes it)."""
        self._keep_reading = True

    def close(self) -> None:
        """What the socket takes now still leaves (a DISCONNECT, which paho closes the socket right after)."""
        try:
            sent_all = self.flush()
        except OSError:
            sent_all = False
        if sent_all and self._keep_reading:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                self.half_closed = True
                return
        self._sock.close()

    def release(self) -> None:
        """Close the socket, also when :meth:`close` left it half closed."""
        self.half_closed = False
        self._sock.close()

    @property
    def raw(self) -> Any:
        """The socket itself (for a selector: its file descriptor)."""
        return self._sock

    def pending(self) -> int:
        """Bytes read from the socket but not yet handed out (paho's loop does not wait while there are any)."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + int(inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferedClient(mqtt.Client):
    """``paho.mqtt.client.Client`` over a :class:`BufferedSocket`, decoding all buffered packets per loop turn."""

    _buffered: BufferedSocket | None = None
    _prepared: Any = None

    def open_socket(self) -> Any:
        """A new connection to the broker, as paho makes it (TCP, TLS if configured); blocks for the handshake."""
        return super()._create_socket()

    def use_socket(self, sock: Any) -> None:
        """Let the next ``reconnect()`` use ``sock`` (from :meth:`open_socket`) instead of connecting itself."""
        self._prepared = sock

    def _create_socket(self) -> Any:
        raw, self._prepared = self._prepared, None
        self._buffered = BufferedSocket(raw if raw is not None else super()._create_socket())
        return self._buffered

    def _packet_write(self) -> MQTTErrorCode:
        # paho's loop_write calls this for its queued packets, then asks want_write() whether to stay registered
        # for writability: the gathered bytes leave here, before that question. What the socket does not take
        # waits in order (want_write stays true) for the next call.
        rc = super()._packet_write()
        buffered = self._buffered
        if self._sock is buffered and buffered is not None:
            try:
                buffered.flush()
            except OSError as exc:
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to write to socket: %s", exc)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST  # loop_write closes the connection, as for its own
        return rc

    def want_write(self) -> bool:
        buffered = self._buffered
        return super().want_write() or (self._sock is buffered and buffered is not None and buffered.unsent > 0)

    def buffered_pending(self) -> int:
        """Bytes read from the socket but not decoded yet (a selector watching the socket does not see them)."""
        buffered = self._buffered
        return buffered.pending() if buffered is not None else 0

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("a BufferedClient hands every message to on_message (see _handle_on_message)")

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # paho first matches every message against its per-filter callbacks (an MQTTMatcher walk under two
        # locks: 6% of the agent's time at 30,000 events/s, docs/performance.md). This client has none (refused
        # above) and is driven from one thread, so the message goes straight to on_message; an exception
        # propagates, as paho's own default (suppress_exceptions False) lets it.
        on_message = self.on_message
        if on_message is not None:
            on_message(self, self._userdata, message)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        turns = 1
        # A partial packet left in the buffer is taken by the next read, which then finds the socket empty
        # (BlockingIOError: paho keeps the partial packet) and empties the buffer: this cannot spin.
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and turns < PACKETS_PER_TURN:
            buffered = self._buffered
            if buffered is None or not buffered.pending():
                break
            rc = super().loop_read(max_packets)
            turns += 1
        return rc
