"""A paho client driven by the agent's asyncio event loop instead of a network thread of its own.

paho supports external event loops through its socket callbacks: the loop watches the socket and calls
``loop_read``/``loop_write`` when it is ready, and ``loop_misc`` each second for keepalive. The agent used one
network thread per client before. Each event then crossed from that thread to the event loop and each
publication back, and every crossing waited for the GIL behind whichever thread held it: at 5,000 events/s an
event spent 2.3 ms (median) between the broker's socket and paho's callback alone (docs/performance.md). On the
loop, a packet is read as soon as the loop is between two steps, and an acknowledgement or a publication is
written in the same turn that made it.

Only the TCP handshake runs in a worker thread (``BufferedClient.open_socket``); paho's ``reconnect()`` then
runs on the loop with that socket, so that no packet the loop queues (an acknowledgement, a publication) can get
ahead of CONNECT. Reconnection uses capped, jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent.broker.buffered import CHUNK, BufferedClient, BufferedSocket
from mqtt_session.backoff import retry_delay

log = logging.getLogger(__name__)

MISC_EVERY = 1.0
"""Seconds between paho's housekeeping calls (keepalive pings and their timeouts, retries)."""
SHORT_LIVED = 5.0
"""A connection lost within this many seconds of opening counts as a failed attempt for the backoff."""
CLOSE_WAIT = 2.0
"""Seconds ``aclose`` waits for the broker to close the connection after our DISCONNECT."""


class PahoOnLoop:
    """Watches one paho client's socket from the running event loop and keeps the client connected.

    The client must have been given its connection parameters (``connect_async``) and no other socket
    callbacks.
    """

    def __init__(
        self,
        client: BufferedClient,
        *,
        name: str,
        reconnect_max: float = 30.0,
        before_read: Callable[[], None] | None = None,
    ) -> None:
        """``before_read``: called before each read of the socket (and the decoding of every packet it holds)."""
        self._client = client
        self._before_read = before_read
        self._name = name
        self._reconnect_max = reconnect_max
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: Any = None
        self._writing = False
        self._flush_due = False
        self._paused = False
        self._read_due = False
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._maintain(), name=f"agent.mqtt[{self._name}]")

    async def aclose(self) -> None:
        """Stop reconnecting, send DISCONNECT, and close the socket once the broker has closed its end.

        mosquitto reads a connection's packets one at a time. Closing at once left acknowledgements unread in its
        socket, and an agent restarting with the same client id took the session over before the broker read them:
        the broker then delivered again what had been acknowledged. The broker closes its end once it has read our
        DISCONNECT, so everything sent before it has been read; the wait is bounded by ``CLOSE_WAIT``.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        sock: BufferedSocket | None = self._sock  # what BufferedClient opens
        if sock is None:
            return
        sock.keep_reading_after_close()
        self._client.disconnect()
        self._client.loop_write()  # the DISCONNECT goes now, and paho closes the socket after it
        if self._sock is sock:  # the DISCONNECT did not go: close the socket without it
            self._unwatch(sock)
            sock.release()
        elif sock.half_closed:
            try:
                await self._peer_closed(sock.raw)
            finally:
                sock.release()

    async def _peer_closed(self, raw: Any) -> None:
        """Return when the peer closed its end of ``raw`` (what it still sends is dropped), or after CLOSE_WAIT."""
        assert self._loop is not None
        closed: asyncio.Future[None] = self._loop.create_future()

        def readable() -> None:
            try:
                if raw.recv(CHUNK):
                    return
            except BlockingIOError:
                return
            except OSError:
                pass
            if not closed.done():
                closed.set_result(None)

        self._loop.add_reader(raw, readable)
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await closed
        except TimeoutError:
            log.warning(
                "%s: the broker did not close the connection within %.0fs of our DISCONNECT", self._name, CLOSE_WAIT
            )
        finally:
            self._loop.remove_reader(raw)

    @property
    def attached(self) -> bool:
        """A socket is open (the broker may not have accepted the session yet: see the client's on_connect)."""
        return self._sock is not None

    # -- flow control ----------------------------------------------------------------------------------
    def pause_reading(self) -> None:
        """Stop reading from the socket: what the broker sends waits in its session (and the socket buffers)."""
        if not self._paused:
            self._paused = True
            if self._sock is not None and self._loop is not None:
                self._loop.remove_reader(self._sock)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._sock is not None and self._loop is not None:
                self._loop.add_reader(self._sock, self._read)
                self._read_soon()  # bytes already read but not decoded do not wake the selector

    # -- connection --------------------------------------------------------------------------------------
    async def _maintain(self) -> None:
        attempt = 0
        while True:
            try:
                await self._connect()
            except Exception as exc:  # whatever it was (refused, TLS, DNS), the client keeps trying
                delay = retry_delay(attempt, self._reconnect_max)
                attempt += 1
                log.warning("%s: connecting failed (%s); retrying in %.1fs", self._name, exc, delay)
                await asyncio.sleep(delay)
                continue
            opened = time.monotonic()
            while not self._lost.is_set():
                self._client.loop_misc()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(MISC_EVERY):
                        await self._lost.wait()
            self._lost.clear()
            # A connection that ends at once (a refused CONNACK, a broker that drops us) counts as a failed attempt,
            # so that the backoff grows; after one that lasted, start again from the shortest delay.
            attempt = attempt + 1 if time.monotonic() - opened < SHORT_LIVED else 0
            await asyncio.sleep(retry_delay(attempt, self._reconnect_max))

    async def _connect(self) -> None:
        """TCP handshake in a thread (it may block up to paho's connect timeout), MQTT CONNECT on the loop."""
        opening = asyncio.ensure_future(asyncio.to_thread(self._client.open_socket))
        try:
            sock = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_unused)  # stopping mid-handshake: the socket it yields goes unused
            raise
        self._client.use_socket(sock)
        self._client.reconnect()  # on the loop: paho opens its session on the socket just made

    # paho calls the socket callbacks from reconnect(), loop_read, loop_write and loop_misc, which all run on the
    # loop (only the TCP handshake runs in a thread, and it calls none): they may touch the selector directly.
    def _on_socket_open(self, _client: mqtt.Client, _ud: Any, sock: Any) -> None:
        self._watch(sock)

    def _watch(self, sock: Any) -> None:
        assert self._loop is not None
        _no_delay(sock)
        self._sock = sock
        self._lost.clear()
        if not self._paused:
            self._loop.add_reader(sock, self._read)
        self._flush()

    def _on_socket_close(self, _client: mqtt.Client, _ud: Any, sock: Any) -> None:
        self._unwatch(sock)

    def _unwatch(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if self._sock is sock:
            self._sock = None
            self._writing = False
            self._lost.set()

    def _on_register_write(self, _client: mqtt.Client, _ud: Any, _sock: Any) -> None:
        # Once per loop turn, however many packets the turn queued (acknowledgements of a whole batch).
        if not self._flush_due:
            self._flush_due = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _on_unregister_write(self, _client: mqtt.Client, _ud: Any, sock: Any) -> None:
        if self._writing and sock is self._sock:
            assert self._loop is not None
            self._writing = False
            self._loop.remove_writer(sock)

    # -- readiness ----------------------------------------------------------------------------------------
    def _read(self) -> None:
        self._read_due = False
        if self._paused or self._sock is None:
            return
        if self._before_read is not None:
            self._before_read()
        self._client.loop_read()
        if self._client.buffered_pending():
            self._read_soon()

    def _read_soon(self) -> None:
        if not self._read_due and self._loop is not None:
            self._read_due = True
            self._loop.call_soon(self._read)

    def _flush(self) -> None:
        """Write what paho queued, in one ``send`` (``BufferedClient.loop_write``); while the socket is full, the
        selector calls this again once it is writable."""
        sock = self._sock
        if sock is None:
            self._flush_due = False
            return
        # paho asks for a write from inside loop_write (its pending bytes are ours until they leave): this is it.
        self._flush_due = True
        try:
            self._client.loop_write()
        finally:
            self._flush_due = False
        if sock is not self._sock:
            return  # the connection failed, and paho closed it
        assert self._loop is not None
        wants = self._client.want_write()
        if wants and not self._writing:
            self._writing = True
            self._loop.add_writer(sock, self._flush)
        elif not wants and self._writing:
            self._writing = False
            self._loop.remove_writer(sock)


def _no_delay(sock: Any) -> None:
    """No Nagle: paho leaves it on, and then a small packet (an acknowledgement, a handler's publication) waits
    for the broker's TCP acknowledgement of the previous one."""
    with contextlib.suppress(OSError, AttributeError):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close_unused(opening: asyncio.Future[Any]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
