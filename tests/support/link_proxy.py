"""A TCP proxy between an agent and its broker that a test cuts, takes down or black-holes."""

from __future__ import annotations

import asyncio

from scripts.mosquitto import Mosquitto


class LinkProxy:
    """A TCP proxy in front of a broker that the test can cut, take down and bring back, or black-hole.

    ``cut()`` closes every connection (both sides) and accepts new ones. ``sever()`` is a link down: it stops
    listening (connection attempts are refused) and cuts; ``restore()`` listens again on the same port.

    Black-holed (``blackholed = True``), the client-to-broker direction is swallowed: the broker keeps delivering
    events and an agent keeps committing them, but its PUBACKs never arrive; killing the agent then leaves
    committed events unacknowledged, which the broker delivers again (DUP) to the next agent process. That is the
    window between commit and acknowledgement where a crash makes duplicates, held open for as long as the test
    wants.
    """

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self._target = (broker.host, broker.port)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.blackholed = False
        self.dropped_bytes = 0
        self.connections = 0
        """Client connections relayed to the broker so far (each reconnection counts)."""
        self.port = 0

    async def __aenter__(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sever()

    @property
    def up(self) -> bool:
        return self._server is not None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        if not self.up:  # severed while this connection was being set up
            writer.close()
            up_writer.close()
            return
        self.connections += 1
        self._conns |= {writer, up_writer}
        for task in (self._pump(reader, up_writer, upstream=True), self._pump(up_reader, writer, upstream=False)):
            t = asyncio.create_task(task, name="test.proxy.pump")
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and self.blackholed:
                    self.dropped_bytes += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()

    async def cut(self) -> None:
        """Close every connection (both sides) now; new ones are accepted."""
        for writer in list(self._conns):
            writer.close()
        self._conns.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def sever(self) -> None:
        """The link goes down: connection attempts are refused from now on and every connection is closed."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.cut()
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """The link comes back: listen again on the same port."""
        assert self._server is None, "the link is up"
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", self.port)
