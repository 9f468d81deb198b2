"""A handler as a long-lived, hardened Docker container: its lifecycle, restarts with backoff, and batches.

The parts have modules of their own: the container as the engine sees it (:mod:`.containers`), the channel
it speaks on, socket or stdin/stdout (:mod:`.channel`), and the matching of replies to requests
(:mod:`.replies`). Lifecycle calls go through the Docker SDK in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
from docker.models.containers import Container

from edge_agent.errors import HandlerExitedAtStart, HandlerStartError
from edge_agent.runtime.base import EventTuple, Failure, HandlerRuntime, Outcome, RuntimeStats
from edge_agent.runtime.channel import HandlerChannel, Io
from edge_agent.runtime.containers import (
    create_and_attach,
    ensure_image,
    exit_state,
    hardened_create_args,
    stop_and_remove,
)
from edge_agent.runtime.replies import PendingReplies
from edge_protocol.deadletter import DeadLetterReason
from edge_protocol.specs import HandlerSpec

log = logging.getLogger(__name__)

EXIT_WAIT = 5.0
"""How long to wait for the engine to see the exit of a container whose stream ended, to learn why."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Exponential backoff between restarts (IoT Edge's default shape: 10 s x 2^n, capped at 5 min)."""

    base: float = 10.0
    max: float = 300.0
    max_failures: int = 5

    def delay(self, failures: int) -> float:
        return float(min(self.max, self.base * 2 ** min(failures, 30)))


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
        self._channel: HandlerChannel | None = None
        self._socket_root = socket_root
        self._connect_timeout = connect_timeout
        self._replies = PendingReplies(max_line)
        self._lock = asyncio.Lock()
        self._healthy = False
        self._closed = False
        # An overlong line arrived: the stream cannot be trusted, the container is replaced (see _on_line).
        self._poisoned = False
        self._failures = 0
        self._restarts = 0
        self._oom_kills = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def oom_kills(self) -> int:
        return self._oom_kills

    @property
    def container_id(self) -> str | None:
        return self._container.id if self._container is not None else None

    @property
    def io(self) -> Io | None:
        """The channel the running container speaks on."""
        return self._channel.io if self._channel is not None else None

    @property
    def invalid_lines(self) -> int:
        return self._replies.invalid_lines

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(ensure_image, self._client, self.spec)
        channel = HandlerChannel(
            self.spec,
            on_line=self._on_line,
            on_end=self._replies.wake,
            max_line=self._max_line,
            socket_root=self._socket_root,
            connect_timeout=self._connect_timeout,
        )
        server = channel.listen()
        args = hardened_create_args(
            self.spec, device_id=self._device, replica=self._replica, generation=self._generation, io_dir=channel.io_dir
        )
        try:
            container, raw = await asyncio.to_thread(create_and_attach, self._client, self.name, args)
        except BaseException:
            if server is not None:
                server.close()
            channel.remove_io_dir()
            raise
        self._container = container
        self._channel = channel
        self._poisoned = False
        await channel.attach(raw)
        try:
            await asyncio.to_thread(container.start)
            await channel.connect(server, self._replies.new_ping, self._replies.drop_ping)
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

    async def aclose(self) -> None:
        """Stop the container once the batch in flight (if any) has its outcomes."""
        async with self._lock:
            self._closed = True
            self._healthy = False
            self._replies.stop_watching()
            await self._discard()

    async def _discard(self) -> None:
        channel = self._channel
        if channel is not None:
            await channel.close()
        container, self._container = self._container, None
        if container is not None:
            await asyncio.to_thread(stop_and_remove, container)
        if channel is not None:
            channel.remove_io_dir()

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
    def _on_line(self, line: bytes) -> None:
        verdict = self._replies.on_line(line)
        if verdict == "ignored":
            return
        self._failures = 0
        if verdict == "poisoned" and self._channel is not None:
            # An overlong line: the container is still streaming it, and whatever it writes next cannot be
            # trusted to be framed right. Replace it; the other waiting events go to the new container.
            self._poisoned = True
            self._channel.gone.set()

    async def _process(self, events: list[EventTuple], keys: list[str] | None) -> list[Outcome]:
        async with self._lock:
            replies = self._replies
            replies.begin(len(events))
            todo = list(range(len(events)))
            while todo:
                restart = "started" if self._healthy or self._closed else await self._restart()
                if restart == "exited":
                    # As if it had read the batch and crashed: the oldest event is the likely cause.
                    replies.outcomes[todo[0]] = Failure("handler-exited", "the handler's container exited")
                    todo = todo[1:]
                    continue
                if self._closed or restart == "unavailable":
                    detail = f"handler {self.state} after {self._failures} consecutive failures"
                    for slot in todo:
                        replies.outcomes[slot] = Failure("handler-unavailable", detail)
                    break
                todo = await self._send_and_wait(events, todo)
            return replies.finish()

    async def _send_and_wait(self, events: list[EventTuple], todo: list[int]) -> list[int]:
        """Send events ``todo``; return those to retry on a fresh container (after an exit or a hang)."""
        channel, replies = self._channel, self._replies
        assert channel is not None
        data = replies.requests(events, todo)
        if not replies.waiting:
            return []  # none could be encoded: each has its Failure
        timeout = self.spec.event_timeout
        # Timed from the write, and the write does not wait for the handler to read: one that hangs on an event
        # before more input than the pipes hold is still declared hung after the timeout.
        replies.watch(timeout)
        # A failed send does not raise here: the transport closes, the reader ends and sets ``gone``.
        channel.write(data)
        while replies.waiting:
            replies.progress.clear()
            if channel.gone.is_set():
                if self._poisoned:
                    self._poisoned = False
                    self._healthy = False
                    return replies.take_waiting()
                return self._charge_oldest(*await self._exit_reason())
            if replies.hung:
                return self._charge_oldest("handler-timeout", f"no reply within {timeout:g}s")
            await replies.progress.wait()
        return []

    async def _exit_reason(self) -> tuple[DeadLetterReason, str]:
        """Why the container's stream ended, as the engine tells it: killed by the kernel's OOM killer inside
        its memory limit (``handler-oom``, counted), or any other exit."""
        container = self._container
        state = await asyncio.to_thread(exit_state, container, EXIT_WAIT) if container is not None else {}
        code = state.get("ExitCode")
        if state.get("OOMKilled"):
            self._oom_kills += 1
            log.error("handler %s: container %s killed for memory (limit %s, exit code %s)",
                      self.name, container.short_id if container else "?", self.spec.limits.memory, code)
            return "handler-oom", f"killed for memory: out of its {self.spec.limits.memory} limit (exit code {code})"
        if isinstance(code, int) and not state.get("Running"):
            return "handler-exited", f"the handler's container exited (exit code {code})"
        return "handler-exited", "the handler's container exited"

    def _charge_oldest(self, reason: DeadLetterReason, detail: str) -> list[int]:
        """The oldest waiting event caused the exit or hang: dead-letter it, retry the others."""
        self._healthy = False
        return self._replies.charge_oldest(reason, detail)

    async def ping(self) -> bool:
        channel = self._channel
        if not self._healthy or channel is None or not channel.connected:
            return False
        line, pid, fut = self._replies.new_ping()
        try:
            await channel.send(line)
            gone: asyncio.Future[Any] = asyncio.ensure_future(channel.gone.wait())
            try:
                await asyncio.wait([fut, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            return fut.done()
        except (OSError, ConnectionError):
            return False
        finally:
            self._replies.drop_ping(pid)


