"""Where a handler's container speaks the protocol: a unix socket of its own, or its stdin/stdout.

The agent listens on a socket in a directory of its own, bind-mounted read-only into the container; a handler
that connects to it (``EDGEFLEET_HANDLER_SOCKET``, as the SDK does) speaks the protocol directly with the
agent, and the attach stream carries only its log. A handler that speaks on stdin/stdout instead goes through
the engine and the container's shim, two more processes to wake per batch (docs/decisions.md). With ``io =
"auto"`` (the default) the agent tells them apart by a ping on stdin: whoever connects, or answers on stdout,
has chosen; ``"socket"`` and ``"stdio"`` fix the channel.

The streams are read by the event loop (one thread hop per read would cost more than the handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from edge_agent.errors import HandlerExitedAtStart, HandlerStartError
from edge_agent.runtime.containers import IO_DIR_PREFIX, SOCKET_ENV, SOCKET_NAME
from edge_agent.runtime.jsonlines import STDERR, STDOUT, FrameError, LineSplitter, StreamDemuxer
from edge_agent.runtime.socket_dir import default_socket_root, prepare_socket_root
from edge_protocol.specs import HandlerSpec

log = logging.getLogger(__name__)

Io = Literal["socket", "stdio"]
NewPing = Callable[[], tuple[bytes, int, "asyncio.Future[Any]"]]


class HandlerChannel:
    """The streams of one container: the attach stream (its log, or the protocol under stdio) and, when it
    connects, its socket. ``gone`` is set once the stream carrying the protocol (or the container) ends."""

    def __init__(
        self,
        spec: HandlerSpec,
        *,
        on_line: Callable[[bytes], None],
        on_end: Callable[[], None],
        max_line: int,
        socket_root: Path | None,
        connect_timeout: float,
    ) -> None:
        self.name = spec.name
        self._mode = spec.io
        self._on_line = on_line
        self._on_end = on_end
        self._max_line = max_line
        self._socket_root = socket_root
        self._connect_timeout = connect_timeout
        self.io_dir: Path | None = None
        """The directory holding the socket, mounted into the container (None under ``stdio``)."""
        self.io: Io | None = None
        """The channel the container speaks on, once ``connect`` returned."""
        self.gone = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        """Where the protocol goes: the socket's writer, or the attach stream's (stdin)."""
        self._attach_writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._attach_task: asyncio.Task[None] | None = None
        # Whether the attach stream's stdout carries the protocol (stdio) or the handler's log (socket).
        self._stdout_is_protocol = spec.io != "socket"

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def listen(self) -> socket.socket | None:
        """The socket the handler connects to (None under ``stdio``), in a fresh directory only this container
        mounts, below the agent's own socket root (0700: nobody else on the host reaches it)."""
        if self._mode == "stdio":
            return None
        try:
            root = prepare_socket_root(self._socket_root or default_socket_root())
            self.io_dir = Path(tempfile.mkdtemp(prefix=IO_DIR_PREFIX, dir=root))
        except OSError as exc:
            raise HandlerStartError(self.name, f"no directory for the handler's socket: {exc}") from exc
        # The handler runs as 65534: it needs to reach the socket (x on the directory) and write to it.
        self.io_dir.chmod(0o711)
        path = self.io_dir / SOCKET_NAME
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(path))
            path.chmod(0o666)
            server.listen(1)
            server.setblocking(False)
        except OSError as exc:
            server.close()
            self.remove_io_dir()
            raise HandlerStartError(self.name, f"cannot listen on {path}: {exc}") from exc
        return server

    async def attach(self, raw: socket.socket) -> None:
        """Start reading the container's attach stream (before the container starts: nothing is missed)."""
        attach_reader, self._attach_writer = await asyncio.open_connection(sock=raw)
        self._attach_task = asyncio.create_task(
            self._read_attach(attach_reader), name=f"agent.handler-attach[{self.name}]"
        )

    async def connect(self, server: socket.socket | None, new_ping: NewPing, drop_ping: Callable[[int], None]) -> Io:
        """Once the container started: the channel it speaks on. Without ``server`` (``stdio``), its stdin;
        else wait for the handler to connect (or, under ``auto``, to answer a ping on stdout instead); refused if
        it exits first or does neither in time."""
        if server is None:
            self._writer, self.io = self._attach_writer, "stdio"
            return "stdio"
        loop = asyncio.get_running_loop()
        accept = asyncio.ensure_future(loop.sock_accept(server))
        gone = asyncio.ensure_future(self.gone.wait())
        waits: list[asyncio.Future[Any]] = [accept, gone]
        pid, pong = 0, None
        if self._mode == "auto" and self._attach_writer is not None:
            # A handler that speaks on stdin/stdout answers this there; one that speaks on the socket never reads it.
            line, pid, pong = new_ping()
            waits.append(pong)
            with contextlib.suppress(OSError, ConnectionError):
                self._attach_writer.write(line)
                await self._attach_writer.drain()
        try:
            await asyncio.wait(waits, timeout=self._connect_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            drop_ping(pid)
            if not accept.done():
                accept.cancel()
        if accept.done() and not accept.cancelled() and accept.exception() is None:
            conn, _ = accept.result()
            conn.setblocking(False)
            self._stdout_is_protocol = False
            reader, self._writer = await asyncio.open_connection(sock=conn)
            self._read_task = asyncio.create_task(self._read_socket(reader), name=f"agent.handler-read[{self.name}]")
            self.io = "socket"
            return "socket"
        if pong is not None and pong.done():
            self._writer, self.io = self._attach_writer, "stdio"
            return "stdio"
        either = f"connected to ${SOCKET_ENV}" + (" or answered a ping on stdout" if pong is not None else "")
        if gone.done() and not gone.cancelled():
            raise HandlerExitedAtStart(self.name, f"the handler exited before it {either}")
        raise HandlerStartError(self.name, f"the handler has not {either} within {self._connect_timeout:g}s")

    async def send(self, data: bytes) -> None:
        """Write ``data`` where the handler reads the protocol; OSError or ConnectionError when it cannot."""
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the stream without waiting until the handler has taken it. A batch larger than the
        buffers on the way (the socket's, the engine's and the container's pipe) cannot leave whole while the
        handler hangs on an event before its end; waiting for it would keep the hang from being noticed. What
        is not sent yet is held by the stream, at most one batch. A send that fails is not raised here: the
        transport closes, and the reader's end sets ``gone``."""
        assert self._writer is not None
        self._writer.write(data)

    async def close(self) -> None:
        """Close both streams and stop reading them (the socket's directory stays until ``remove_io_dir``: the
        container mounts it until it is removed)."""
        for writer in {self._writer, self._attach_writer} - {None}:
            assert writer is not None
            if writer.transport.get_write_buffer_size():
                # Requests the handler never read (it hung): a graceful close would wait for it to read them.
                writer.transport.abort()
            else:
                writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        self._writer = self._attach_writer = None
        for task in (self._read_task, self._attach_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._read_task = self._attach_task = None

    def remove_io_dir(self) -> None:
        if self.io_dir is not None:
            shutil.rmtree(self.io_dir, ignore_errors=True)
            self.io_dir = None

    async def _read_attach(self, reader: asyncio.StreamReader) -> None:
        """The attach stream: stderr is the handler's log; so is stdout, unless it carries the protocol. Its end
        is the container's exit (the only sign of one before the handler connected to its socket)."""
        demux = StreamDemuxer()
        lines = LineSplitter(self._max_line)
        try:
            while data := await reader.read(1 << 16):
                for stream, chunk in demux.feed(data):
                    if stream == STDOUT and self._stdout_is_protocol:
                        for line in lines.feed(chunk):
                            self._on_line(line)
                    elif stream in (STDOUT, STDERR):
                        self._log_output(chunk)
        except (OSError, FrameError) as exc:
            log.warning("handler %s: attach stream failed: %s", self.name, exc)
        finally:
            self._ended()

    async def _read_socket(self, reader: asyncio.StreamReader) -> None:
        """Replies on the handler's socket; its end is the handler's."""
        lines = LineSplitter(self._max_line)
        try:
            while data := await reader.read(1 << 16):
                for line in lines.feed(data):
                    self._on_line(line)
        except OSError as exc:
            log.warning("handler %s: socket failed: %s", self.name, exc)
        finally:
            self._ended()

    def _ended(self) -> None:
        self.gone.set()
        self._on_end()

    def _log_output(self, chunk: bytes) -> None:
        log.info("handler %s: %s", self.name, chunk.decode(errors="replace").rstrip()[:2000])


