"""The agent's side of a subscription's intake workers: start, supervise, serve their commits, sum their counts.

Each part k in ``range(spec.workers)`` is one ``edge-agent worker`` process (:mod:`.child`). The group answers
its requests on the pipe: ``state`` (its checkpoint and packet ids from the outbox) and ``commit`` (one outbox
transaction, then the reply that lets the worker acknowledge). A worker that exits is started again after a
backoff (0.5 s doubling to 30 s, back to 0.5 s after a run of 30 s); its session, with what it had not
acknowledged, waits for it in the broker. Counters are the sum over the parts and over the earlier processes of
each part (a worker's last half second of counts before a crash is not seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.aggregation.windows import WindowSet
from edge_agent.counters import SubscriptionCounters
from edge_agent.errors import OutboxError
from edge_agent.outbox import Outbox
from edge_agent.workers.link import LINE_LIMIT, Assignment, Link, part_key
from edge_protocol.aggregate import WindowResult
from edge_protocol.specs import HandlerSpec, SubscriptionSpec

log = logging.getLogger(__name__)

RESTART_BASE = 0.5
RESTART_MAX = 30.0
STABLE_AFTER = 30.0


@dataclass
class WorkerProcess:
    """One running worker: its pipe, how to wait for its end and how to kill it."""

    link: Link
    wait: Callable[[], Awaitable[int]]
    kill: Callable[[], None]
    pid: int = 0


Launch = Callable[[Assignment], Awaitable[WorkerProcess]]


async def spawn_worker(assignment: Assignment) -> WorkerProcess:
    """``edge-agent worker`` as a child of this interpreter, its assignment on the first line of its stdin."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", "worker",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    link = Link(proc.stdout, proc.stdin)
    link.send(assignment.model_dump(mode="json"))

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    return WorkerProcess(link, proc.wait, kill, proc.pid)


@dataclass
class _Part:
    index: int
    process: WorkerProcess | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    earlier: dict[str, Any] = field(default_factory=dict)
    """The counters of this part's earlier processes, summed."""
    current: dict[str, Any] = field(default_factory=dict)
    """The last stats the running process sent."""
    starts: int = 0


class WorkerGroup:
    """The N worker processes of one subscription, as the pipeline sees a dispatcher."""

    def __init__(
        self,
        spec: SubscriptionSpec,
        handler: HandlerSpec,
        *,
        outbox: Outbox,
        device_id: str,
        assign: Callable[[SubscriptionSpec, HandlerSpec, int], Assignment],
        end_session: Callable[[str], None],
        launch: Launch = spawn_worker,
        restart_base: float = RESTART_BASE,
    ) -> None:
        self.spec = spec
        self.handler = handler
        self._outbox = outbox
        self._device = device_id
        self._assign = assign
        self._launch = launch
        self._end_session = end_session
        self._restart_base = restart_base
        self._parts = [_Part(k) for k in range(spec.workers)]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- what the agent reports ----------------------------------------------------------------------
    @property
    def counters(self) -> SubscriptionCounters:
        total = SubscriptionCounters()
        for part in self._parts:
            for stats in (part.earlier, part.current.get("counters", {})):
                _add(total, stats)
        return total

    @property
    def backlog(self) -> int:
        return sum(int(p.current.get("backlog", 0)) for p in self._parts)

    @property
    def handler_stats(self) -> tuple[int, int]:
        """Events the workers' handlers processed and failed, summed (for the handler's report)."""
        processed = sum(int(p.earlier.get("h_processed", 0)) + int(p.current.get("processed", 0)) for p in self._parts)
        errors = sum(int(p.earlier.get("h_errors", 0)) + int(p.current.get("errors", 0)) for p in self._parts)
        return processed, errors

    @property
    def restarts(self) -> int:
        return sum(max(p.starts - 1, 0) for p in self._parts)

    def pids(self) -> list[int]:
        """The running workers' process ids, by part (0 for a part that is between processes)."""
        return [p.process.pid if p.process is not None else 0 for p in self._parts]

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self, ready_within: float) -> None:
        """Start every part; return once each is connected to the broker (or ``ready_within`` seconds passed)."""
        for part in self._parts:
            name = f"agent.worker[{self.spec.name}#p{part.index}]"
            self._tasks.append(asyncio.create_task(self._supervise(part), name=name))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ready_within):
                await asyncio.gather(*(p.ready.wait() for p in self._parts))

    async def drain(self, leaving_from: int | None = None) -> None:
        """Stop every worker the graceful way: each commits and acknowledges what it holds, then exits. Parts
        from ``leaving_from`` on leave the share group first (unsubscribe, so that the broker deals them
        nothing more) and their sessions are ended once they exited: they will not run again."""
        self._stopping = True
        leaving = [p for p in self._parts if leaving_from is not None and p.index >= leaving_from]
        for part in self._parts:
            if part.process is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    part.process.link.send({"op": "stop", "leave": part in leaving})
        if self._tasks:
            await asyncio.wait(self._tasks)
        for part in leaving:
            await asyncio.to_thread(self._end_session, self._assign(self.spec, self.handler, part.index).client_id)

    async def aclose(self) -> None:
        """Kill what still runs (after the grace period): its unacknowledged events stay in its session."""
        self._stopping = True
        for part in self._parts:
            if part.process is not None:
                part.process.kill()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def retire(self, keep: int = 0) -> None:
        """The subscription is removed or replaced: drain the workers, then emit every part's open windows and
        keep only the parts' sealed marks (as a retired dispatcher does, ``WindowSet.seal``). The sessions of the
        first ``keep`` parts stay for the replacement's workers (what the broker deals them meanwhile waits
        there)."""
        await self.drain(leaving_from=keep)
        checkpoints = await self._outbox.checkpoints()
        closed: list[WindowResult] = []
        sealed: dict[str, dict[str, Any] | None] = {}
        for part in self._parts:
            key = part_key(f"{self.spec.name}@{self.spec.revision}", part.index)
            if key in checkpoints:
                windows = WindowSet(self.spec, self._device, part.index)
                if windows.restore(checkpoints[key]):
                    closed += windows.seal()
                    sealed[key] = windows.snapshot()
                else:
                    sealed[key] = None
        if sealed:
            await self._outbox.commit(closed, sealed)

    # -- one part ------------------------------------------------------------------------------------
    async def _supervise(self, part: _Part) -> None:
        loop = asyncio.get_running_loop()
        delay = self._restart_base
        while not self._stopping:
            began = loop.time()
            try:
                process = await self._launch(self._assign(self.spec, self.handler, part.index))
            except OSError as exc:
                log.error("worker %s#p%d did not start: %s", self.spec.name, part.index, exc)
            else:
                part.process = process
                part.starts += 1
                try:
                    await self._serve(part, process.link)
                    code = await process.wait()
                finally:
                    part.process = None
                    _fold(part)
                if self._stopping:
                    return
                log.warning("worker %s#p%d exited (%s); restarting in %.1fs", self.spec.name, part.index, code, delay)
            if loop.time() - began > STABLE_AFTER:
                delay = self._restart_base
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _serve(self, part: _Part, link: Link) -> None:
        while (message := await link.receive()) is not None:
            op = message.get("op")
            if op == "stats":
                part.current = message
            elif op == "ready":
                part.ready.set()
            elif op == "state":
                link.send({"reply_to": message["id"], **await self._state(part)})
            elif op == "commit":
                link.send({"reply_to": message["id"], **await self._commit(message)})

    async def _state(self, part: _Part) -> dict[str, Any]:
        checkpoints = await self._outbox.checkpoints()
        delivered = (await self._outbox.delivered()).get(part_key(self.spec.name, part.index), {})
        return {
            "checkpoint": checkpoints.get(part_key(f"{self.spec.name}@{self.spec.revision}", part.index)),
            "delivered": [(mid, digest.hex()) for mid, digest in delivered.items()],
        }

    async def _commit(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            results = [WindowResult.model_validate(r) for r in message.get("results", [])]
            delivered = [(str(k), int(m), bytes.fromhex(d)) for k, m, d in message.get("delivered", [])]
            added = await self._outbox.commit(results, message.get("checkpoints", {}), delivered)
        except (OutboxError, ValueError) as exc:
            return {"error": str(exc)}
        return {"added": added}


def _fold(part: _Part) -> None:
    """A process ended: its counts join the part's earlier ones."""
    stats = part.current
    earlier = part.earlier
    for name, value in stats.get("counters", {}).items():
        if isinstance(value, dict):
            bucket = earlier.setdefault(name, {})
            for reason, n in value.items():
                bucket[reason] = bucket.get(reason, 0) + n
        else:
            earlier[name] = earlier.get(name, 0) + value
    earlier["h_processed"] = earlier.get("h_processed", 0) + int(stats.get("processed", 0))
    earlier["h_errors"] = earlier.get("h_errors", 0) + int(stats.get("errors", 0))
    part.current = {}


def _add(total: SubscriptionCounters, stats: dict[str, Any]) -> None:
    for name in ("received", "processed", "dropped_overflow", "redelivered", "windows_closed", "published"):
        setattr(total, name, getattr(total, name) + int(stats.get(name, 0)))
    total.dead_lettered.update(Counter({str(k): int(v) for k, v in stats.get("dead_lettered", {}).items()}))


async def switch_groups(
    groups: dict[str, WorkerGroup],
    wanted: list[SubscriptionSpec],
    handlers: dict[str, HandlerSpec],
    make: Callable[[SubscriptionSpec, HandlerSpec], WorkerGroup],
    ready_within: float,
) -> None:
    """Run exactly the multi-worker subscriptions ``wanted``: a group whose subscription or handler changed is
    retired before its replacement starts (they share their sessions' client ids, so the replacement takes
    over what the broker dealt meanwhile); a removed one, or parts beyond a lower count, leave for good."""
    by_name = {s.name: s for s in wanted}
    for name, group in list(groups.items()):
        new = by_name.get(name)
        if new is not None and new == group.spec and handlers.get(new.handler) == group.handler:
            continue
        del groups[name]
        await group.retire(keep=new.workers if new is not None else 0)
    for spec in wanted:
        if spec.name not in groups:
            group = groups[spec.name] = make(spec, handlers[spec.handler])
            await group.start(ready_within)
