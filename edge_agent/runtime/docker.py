"""A handler as a long-lived, hardened Docker container, spoken to over a unix socket or its stdin/stdout.

The agent listens on a socket in a directory of its own, bind-mounted read-only into the container; a handler
that connects to it (``EDGEFLEET_HANDLER_SOCKET``, as the SDK does) speaks the protocol directly with the
agent, and the attach stream carries only its log. A handler that speaks on stdin/stdout instead goes through
the engine and the container's shim, two more processes to wake per batch (docs/decisions.md). With ``io =
"auto"`` (the default) the agent tells them apart by a ping on stdin: whoever connects, or answers on stdout,
has chosen; ``"socket"`` and ``"stdio"`` fix the channel.

Lifecycle calls go through the Docker SDK in a thread; the streams are read by the event loop (one thread hop
per read would cost more than the handler). Replies come back in order, so a line that does not parse is
charged to the oldest event still waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import LogConfig, Mount

from edge_agent.errors import HandlerExitedAtStart, HandlerStartError
from edge_agent.runtime.base import EventTuple, Failure, HandlerRuntime, Outcome, RuntimeStats
from edge_agent.runtime.jsonlines import STDERR, STDOUT, FrameError, LineSplitter, StreamDemuxer
from edge_agent.runtime.socket_dir import default_socket_root, prepare_socket_root
from edge_protocol.deadletter import DeadLetterReason
from edge_protocol.handler_io import ReplyError, decode_reply, encode_event, encode_ping
from edge_protocol.specs import HandlerSpec

log = logging.getLogger(__name__)

LABEL_DEVICE = "edgefleet.device"
LABEL_HANDLER = "edgefleet.handler"
LABEL_RELEASE = "edgefleet.release"
LABEL_REPLICA = "edgefleet.replica"

SOCKET_ENV = "EDGEFLEET_HANDLER_SOCKET"
IO_DIR_IN_CONTAINER = "/run/edgefleet"
SOCKET_NAME = "handler.sock"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Exponential backoff between restarts (IoT Edge's default shape: 10 s x 2^n, capped at 5 min)."""

    base: float = 10.0
    max: float = 300.0
    max_failures: int = 5

    def delay(self, failures: int) -> float:
        return float(min(self.max, self.base * 2 ** min(failures, 30)))


def hardened_create_args(
    spec: HandlerSpec, *, device_id: str, replica: int, generation: str, io_dir: Path | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``containers.create``: the hardening every handler gets, from its spec; with
    ``io_dir``, that directory (holding the agent's socket) mounted read-only where the handler finds it."""
    limits = spec.limits
    environment = dict(spec.env)
    mounts = []
    if io_dir is not None:
        environment[SOCKET_ENV] = f"{IO_DIR_IN_CONTAINER}/{SOCKET_NAME}"
        mounts.append(Mount(target=IO_DIR_IN_CONTAINER, source=str(io_dir), type="bind", read_only=True))
    return {
        "image": spec.image,
        "command": spec.command,
        # The generation lets a handler's next version start beside the running one during a switch.
        "name": f"edgefleet.{device_id}.{spec.name}.{replica}.{generation}",
        "stdin_open": spec.io != "socket",
        "network_mode": spec.network,
        "read_only": True,
        "tmpfs": {"/tmp": f"size={limits.tmpfs_size},mode=1777"},  # noqa: S108 - inside the container
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "user": "65534:65534",
        "pids_limit": limits.pids,
        "mem_limit": limits.memory,
        "memswap_limit": limits.memory,
        "nano_cpus": int(limits.cpus * 1e9),
        "environment": environment,
        "mounts": mounts,
        "labels": {
            LABEL_DEVICE: device_id,
            LABEL_HANDLER: spec.name,
            LABEL_RELEASE: spec.image,
            LABEL_REPLICA: str(replica),
        },
        "privileged": False,
        # With the engine's default json-file driver every stdio reply was also written to an unrotated file on the
        # device's disk (1.8 GB/h at 5,000 events/s), and the writes stalled the attach stream. The handler's log
        # reaches the agent's log through the attach stream anyway.
        "log_config": LogConfig(type=LogConfig.types.NONE),
    }


class DockerHandler(HandlerRuntime):
    """One replica of one handler, as a container; restarts it with backoff when it exits or hangs."""

    def __init__(
        self,
        spec: HandlerSpec,
        *,
        client: docker.DockerClient,
        device_id: str,
        replica: int = 0,
        max_line: int = 1 << 20,
        restart: RestartPolicy | None = None,
        connect_timeout: float = 30.0,
        socket_root: Path | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.stats = RuntimeStats()
        self._client = client
        self._device = device_id
        self._replica = replica
        self._max_line = max_line
        self._generation = secrets.token_hex(3)
        self._policy = restart or RestartPolicy()
        self._next_attempt = 0.0
        self._container: Container | None = None
        self._writer: asyncio.StreamWriter | None = None
        """Where the protocol goes: the socket's writer, or the attach stream's (stdin)."""
        self._attach_writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._attach_task: asyncio.Task[None] | None = None
        # Whether the attach stream's stdout carries the protocol (stdio) or the handler's log (socket).
        self._stdout_is_protocol = False
        self._io_dir: Path | None = None
        self._socket_root = socket_root
        self._connect_timeout = connect_timeout
        self.io: Literal["socket", "stdio"] | None = None
        """The channel the running container speaks on."""
        self._lock = asyncio.Lock()
        self._next_id = 1
        self._pending: dict[int, int] = {}
        self._order: list[int] = []
        self._outcomes: list[Outcome | None] = []
        self._progress = asyncio.Event()
        self._gone = asyncio.Event()
        self._healthy = False
        self._closed = False
        self._poisoned = False
        self._failures = 0
        self._pongs: dict[int, asyncio.Future[Any]] = {}
        self._restarts = 0
        self.invalid_lines = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def container_id(self) -> str | None:
        return self._container.id if self._container is not None else None

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._ensure_image)
        server = self._listen() if self.spec.io != "stdio" else None
        try:
            container, raw = await asyncio.to_thread(self._create_and_attach)
        except BaseException:
            if server is not None:
                server.close()
            self._remove_io_dir()
            raise
        self._container = container
        self._gone = asyncio.Event()
        self._poisoned = False
        self._stdout_is_protocol = self.spec.io != "socket"
        attach_reader, self._attach_writer = await asyncio.open_connection(sock=raw)
        self._attach_task = asyncio.create_task(
            self._read_attach(attach_reader), name=f"agent.handler-attach[{self.name}]"
        )
        try:
            await asyncio.to_thread(container.start)
            if server is None:
                self._writer, self.io = self._attach_writer, "stdio"
            else:
                self.io = await self._connect(server)
        except docker.errors.APIError as exc:
            await self._discard()
            raise HandlerStartError(self.name, f"start refused: {exc.explanation or exc}") from exc
        except BaseException:
            await self._discard()
            raise
        finally:
            if server is not None:
                server.close()
        self._healthy = True
        log.info("handler %s started: container %s image %s", self.name, container.short_id, self.spec.image)

    def _listen(self) -> socket.socket:
        """The socket the handler connects to, in a fresh directory only this container mounts, below the
        agent's own socket root (0700: nobody else on the host reaches it)."""
        try:
            root = prepare_socket_root(self._socket_root or default_socket_root())
            self._io_dir = Path(tempfile.mkdtemp(prefix="edgefleet-io-", dir=root))
        except OSError as exc:
            raise HandlerStartError(self.name, f"no directory for the handler's socket: {exc}") from exc
        # The handler runs as 65534: it needs to reach the socket (x on the directory) and write to it.
        self._io_dir.chmod(0o711)
        path = self._io_dir / SOCKET_NAME
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(path))
            path.chmod(0o666)
            server.listen(1)
            server.setblocking(False)
        except OSError as exc:
            server.close()
            self._remove_io_dir()
            raise HandlerStartError(self.name, f"cannot listen on {path}: {exc}") from exc
        return server

    async def _connect(self, server: socket.socket) -> Literal["socket", "stdio"]:
        """Wait for the handler to connect (or, under ``auto``, to answer a ping on stdout instead); refused if
        it exits first or does neither in time."""
        loop = asyncio.get_running_loop()
        accept = asyncio.ensure_future(loop.sock_accept(server))
        gone = asyncio.ensure_future(self._gone.wait())
        waits: list[asyncio.Future[Any]] = [accept, gone]
        pid, pong = 0, None
        if self.spec.io == "auto" and self._attach_writer is not None:
            # A handler that speaks on stdin/stdout answers this there; one that speaks on the socket never reads it.
            line, pid, pong = self._new_ping()
            waits.append(pong)
            with contextlib.suppress(OSError, ConnectionError):
                self._attach_writer.write(line)
                await self._attach_writer.drain()
        try:
            await asyncio.wait(waits, timeout=self._connect_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            self._pongs.pop(pid, None)
            if not accept.done():
                accept.cancel()
        if accept.done() and not accept.cancelled() and accept.exception() is None:
            conn, _ = accept.result()
            conn.setblocking(False)
            self._stdout_is_protocol = False
            reader, self._writer = await asyncio.open_connection(sock=conn)
            self._read_task = asyncio.create_task(self._read_socket(reader), name=f"agent.handler-read[{self.name}]")
            return "socket"
        if pong is not None and pong.done():
            self._writer = self._attach_writer
            return "stdio"
        either = f"connected to ${SOCKET_ENV}" + (" or answered a ping on stdout" if pong is not None else "")
        if gone.done() and not gone.cancelled():
            raise HandlerExitedAtStart(self.name, f"the handler exited before it {either}")
        raise HandlerStartError(self.name, f"the handler has not {either} within {self._connect_timeout:g}s")

    def _remove_io_dir(self) -> None:
        if self._io_dir is not None:
            shutil.rmtree(self._io_dir, ignore_errors=True)
            self._io_dir = None

    def _ensure_image(self) -> None:
        try:
            self._client.images.get(self.spec.image)
        except docker.errors.ImageNotFound:
            try:
                self._client.images.pull(self.spec.image)
            except docker.errors.APIError as exc:
                raise HandlerStartError(self.name, f"image {self.spec.image} absent and pull failed: {exc}") from exc
        except docker.errors.APIError as exc:
            raise HandlerStartError(self.name, f"engine error: {exc}") from exc

    def _create_and_attach(self) -> tuple[Container, socket.socket]:
        args = hardened_create_args(
            self.spec, device_id=self._device, replica=self._replica, generation=self._generation, io_dir=self._io_dir
        )
        try:
            container = self._client.containers.create(**args)
        except docker.errors.APIError as exc:
            raise HandlerStartError(self.name, f"create refused: {exc.explanation or exc}") from exc
        # Attach before start so no early output is lost and nothing is buffered in the HTTP layer.
        stdin = int(args["stdin_open"])
        sock_io = container.attach_socket(params={"stdin": stdin, "stdout": 1, "stderr": 1, "stream": 1})
        raw: socket.socket = getattr(sock_io, "_sock", sock_io)
        # Our own descriptor: the SDK's response objects may close theirs when collected.
        dup = raw.dup()
        dup.setblocking(False)
        sock_io.close()
        # Close the SDK's descriptor now: left to garbage collection, the engine keeps the attach open and a
        # later stop/remove of this container hangs until it is collected.
        raw.close()
        return container, dup

    async def aclose(self) -> None:
        """Stop the container once the batch in flight (if any) has its outcomes."""
        async with self._lock:
            self._closed = True
            self._healthy = False
            await self._discard()

    async def _discard(self) -> None:
        for writer in {self._writer, self._attach_writer} - {None}:
            assert writer is not None
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
        container, self._container = self._container, None
        if container is not None:
            await asyncio.to_thread(_stop_and_remove, container)
        self._remove_io_dir()

    @property
    def failed(self) -> bool:
        """Marked failed after ``max_failures`` consecutive failures; retried every ``restart_max``."""
        return self._failures >= self._policy.max_failures

    @property
    def state(self) -> str:
        if self._closed:
            return "stopped"
        if self._healthy:
            return "running"
        return "failed" if self.failed else "restarting"

    async def _restart(self) -> Literal["started", "exited", "unavailable"]:
        """Replace the container after the backoff. "exited" when the new one died before it connected (a crash
        like any other: the caller charges it to the oldest event); "unavailable" (at once) while a failed
        handler's next attempt is not due, so its events are dead-lettered instead of stalling the subscription
        for minutes, or when the engine refused the container."""
        self._healthy = False
        await self._discard()
        loop = asyncio.get_running_loop()
        if self.failed and loop.time() < self._next_attempt:
            return "unavailable"
        delay = self._policy.delay(self._failures)
        self._failures += 1
        self._restarts += 1
        if self.failed:
            self._next_attempt = loop.time() + self._policy.max
            log.error("handler %s failed %d times in a row; marked failed, next attempt in %.0fs",
                      self.name, self._failures, self._policy.max)
        log.warning("handler %s: restarting in %.1fs (failure %d)", self.name, delay, self._failures)
        await asyncio.sleep(delay)
        try:
            await self.start()
        except HandlerExitedAtStart as exc:
            log.error("%s", exc)
            return "exited"
        except HandlerStartError as exc:
            log.error("%s", exc)
            return "unavailable"
        return "started"

    # -- conversation --------------------------------------------------------------------------------
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
            self._gone.set()
            self._progress.set()

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
            self._gone.set()
            self._progress.set()

    def _log_output(self, chunk: bytes) -> None:
        log.info("handler %s: %s", self.name, chunk.decode(errors="replace").rstrip()[:2000])

    def _on_line(self, line: bytes) -> None:
        if not line.strip() and line:
            return
        try:
            reply = decode_reply(line) if line else None
        except ReplyError as exc:
            reply = None
            reason = str(exc)
        else:
            reason = f"line longer than {self._max_line} bytes"
        if reply is not None and reply.kind == "pong":
            fut = self._pongs.pop(reply.id or 0, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        if reply is not None and reply.id in self._pending:
            slot = self._pending.pop(reply.id)
        elif self._order:
            # Replies arrive in order: an unreadable or unattributable line belongs to the oldest waiter.
            self.invalid_lines += 1
            oldest = next((i for i in self._order if i in self._pending), None)
            if oldest is None:
                return
            slot = self._pending.pop(oldest)
            if reply is not None:
                reason = f"reply for unknown id {reply.id}"
            self._outcomes[slot] = Failure("handler-invalid-reply", reason)
            self._failures = 0
            if not line:
                # An overlong line: the container is still streaming it, and whatever it writes next cannot be
                # trusted to be framed right. Replace it; the other waiting events go to the new container.
                self._poisoned = True
                self._gone.set()
            self._progress.set()
            return
        else:
            self.invalid_lines += 1
            return
        self._outcomes[slot] = reply
        self._failures = 0
        self._progress.set()

    async def _process(self, events: list[EventTuple], keys: list[str] | None) -> list[Outcome]:
        async with self._lock:
            self._outcomes = [None] * len(events)
            todo = list(range(len(events)))
            while todo:
                restart = "started" if self._healthy or self._closed else await self._restart()
                if restart == "exited":
                    # As if it had read the batch and crashed: the oldest event is the likely cause.
                    self._outcomes[todo[0]] = Failure("handler-exited", "the handler's container exited")
                    todo = todo[1:]
                    continue
                if self._closed or restart == "unavailable":
                    detail = f"handler {self.state} after {self._failures} consecutive failures"
                    for slot in todo:
                        self._outcomes[slot] = Failure("handler-unavailable", detail)
                    break
                todo = await self._send_and_wait(events, todo)
            outcomes = self._outcomes
            self._outcomes = []
            return [o if o is not None else Failure("handler-unavailable", "no outcome") for o in outcomes]

    async def _send_and_wait(self, events: list[EventTuple], todo: list[int]) -> list[int]:
        """Send events ``todo``; return those to retry on a fresh container (after an exit or a hang)."""
        assert self._writer is not None
        self._pending.clear()
        self._order = []
        parts = []
        for slot in todo:
            topic, payload, ts = events[slot]
            try:
                line = encode_event(self._next_id, topic, payload, ts)
            except TypeError as exc:
                # orjson reads deeper nesting than it writes: such a payload cannot reach the handler.
                self._outcomes[slot] = Failure("invalid-json", f"cannot be passed to the handler: {exc}")
                continue
            self._pending[self._next_id] = slot
            self._order.append(self._next_id)
            self._next_id += 1
            parts.append(line)
        try:
            self._writer.write(b"".join(parts))
            await self._writer.drain()
        except (OSError, ConnectionError):
            self._gone.set()
        timeout = self.spec.event_timeout
        while self._pending:
            self._progress.clear()
            if self._gone.is_set():
                if self._poisoned:
                    self._poisoned = False
                    self._healthy = False
                    retry = [self._pending[i] for i in self._order if i in self._pending]
                    self._pending.clear()
                    return retry
                return self._charge_oldest("handler-exited", "the handler's container exited")
            try:
                async with asyncio.timeout(timeout):
                    await self._progress.wait()
            except TimeoutError:
                return self._charge_oldest("handler-timeout", f"no reply within {timeout:g}s")
        return []

    def _charge_oldest(self, reason: DeadLetterReason, detail: str) -> list[int]:
        """The oldest waiting event caused the exit or hang: dead-letter it, retry the others."""
        self._healthy = False
        waiting = [self._pending[i] for i in self._order if i in self._pending]
        self._pending.clear()
        if not waiting:
            return []
        self._outcomes[waiting[0]] = Failure(reason, detail)
        return waiting[1:]

    def _new_ping(self) -> tuple[bytes, int, asyncio.Future[Any]]:
        """A ping line, its id, and the future its pong resolves (the caller removes it from ``_pongs``)."""
        pid = self._next_id
        self._next_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pongs[pid] = fut
        return encode_ping(pid), pid, fut

    async def ping(self) -> bool:
        if not self._healthy or self._writer is None:
            return False
        line, pid, fut = self._new_ping()
        try:
            self._writer.write(line)
            await self._writer.drain()
            gone: asyncio.Future[Any] = asyncio.ensure_future(self._gone.wait())
            try:
                await asyncio.wait([fut, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            return fut.done()
        except (OSError, ConnectionError):
            return False
        finally:
            self._pongs.pop(pid, None)


def _stop_and_remove(container: Container) -> None:
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.stop(timeout=3)
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.remove(force=True)


def remove_device_containers(client: docker.DockerClient, device_id: str) -> int:
    """Remove every container an earlier run of this device's agent left (found by label, never by name:
    several agents may share one engine, and none touches another's)."""
    found = client.containers.list(all=True, filters={"label": f"{LABEL_DEVICE}={device_id}"})
    for container in found:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)
        # ... and the socket directory each one mounted (the earlier run died before removing it).
        for mount in container.attrs.get("Mounts") or []:
            source = Path(mount.get("Source") or "")
            if mount.get("Destination") == IO_DIR_IN_CONTAINER and source.name.startswith("edgefleet-io-"):
                shutil.rmtree(source, ignore_errors=True)
    return len(found)


def docker_client(docker_host: str | None) -> docker.DockerClient:
    """A client for ``docker_host``, else DOCKER_HOST / the default socket."""
    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise HandlerStartError("*", f"no Docker engine at {docker_host or 'DOCKER_HOST'}: {exc}") from exc
    return client


