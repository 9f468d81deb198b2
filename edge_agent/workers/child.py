"""``edge-agent worker``: one intake worker of one subscription, a child process of the agent.

It reads its :class:`~edge_agent.workers.link.Assignment` from stdin, then runs what the agent runs for a
subscription (intake, dispatcher, windows, handler) on a session of its own: client id ``<agent>.<sub>.p<k>``,
persistent, manual acknowledgement, subscribed to ``$share/<group>/<filter>`` so that the broker deals each event
to one worker of the group. Its windows carry its part number. Commits go to the agent over the pipe and an event
is acknowledged only after the agent's reply that the commit is durable: the at-least-once chain is the agent's.

``stop`` from the agent drains (everything queued is committed and acknowledged; open windows stay checkpointed).
The end of the pipe (the agent died) stops at once: what is not acknowledged stays in the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from edge_agent.aggregation.windows import WindowSet
from edge_agent.broker import LocalBroker
from edge_agent.dispatcher import Dispatcher
from edge_agent.errors import OutboxError
from edge_agent.intake import Intake
from edge_agent.runtime.base import HandlerRuntime
from edge_agent.staging import start_anyway
from edge_agent.workers.link import Assignment, Link, part_key, stdio_link
from edge_protocol.aggregate import WindowResult
from edge_protocol.specs import HandlerSpec

log = logging.getLogger(__name__)

REPLICA_BASE = 100
"""Worker k's containers are replicas ``100 (k + 1) + i``: apart from the agent's own and from each other's."""


LEAVE_SETTLE = 0.5
"""How long a leaving worker keeps reading after its UNSUBSCRIBE went out, for what the broker dealt before."""


def replica_range(part: int) -> range:
    return range(REPLICA_BASE * (part + 1), REPLICA_BASE * (part + 1) + REPLICA_BASE)


class RemoteCommits:
    """The agent's outbox, seen from a worker: a commit returns once the agent's transaction is durable."""

    def __init__(self, link: Link) -> None:
        self._link = link

    async def commit(
        self,
        results: list[WindowResult],
        checkpoints: dict[str, dict[str, Any] | None],
        delivered: list[tuple[str, int, bytes]] | None = None,
    ) -> int:
        reply = await self._link.request({
            "op": "commit",
            "results": [r.model_dump(mode="json") for r in results],
            "checkpoints": checkpoints,
            "delivered": [(key, mid, digest.hex()) for key, mid, digest in delivered or []],
        })
        if "error" in reply:
            raise OutboxError(str(reply["error"]))
        return int(reply.get("added", 0))


def _docker_factory(a: Assignment) -> Any:
    from edge_agent.runtime.containers import docker_client, remove_device_containers
    from edge_agent.runtime.docker import DockerHandler, RestartPolicy
    from edge_agent.runtime.pool import ReplicaPool

    client = docker_client(a.docker_host)
    left = remove_device_containers(client, a.device_id, replica_range(a.part))
    if left:
        log.info("removed %d containers left by this worker's previous process", left)
    rt = a.runtime
    policy = RestartPolicy(base=rt.restart_backoff, max=rt.restart_max, max_failures=rt.max_failures)
    base = replica_range(a.part).start

    def make(spec: HandlerSpec) -> HandlerRuntime:
        def replica(i: int) -> HandlerRuntime:
            return DockerHandler(spec, client=client, device_id=a.device_id, replica=base + i, restart=policy,
                                 connect_timeout=rt.health_timeout, socket_root=rt.socket_dir)

        if spec.replicas == 1 and not spec.max_replicas:
            return replica(0)
        return ReplicaPool(spec, replica)

    return make


def _pipeline(
    link: Link, a: Assignment, runtime: HandlerRuntime, state: dict[str, Any]
) -> tuple[LocalBroker, Intake, Dispatcher]:
    """The worker's session on the share group, its intake and its dispatcher, as the agent's own."""
    spec, lb = a.subscription, a.local_broker
    windows = WindowSet(spec, a.device_id, a.part)
    if state.get("checkpoint") is not None:
        windows.restore(state["checkpoint"])
    local = LocalBroker(
        host=lb.host, port=lb.port, client_id=a.client_id, username=lb.username, password=lb.password,
        subscriptions=[(f"$share/{a.share_group}/{spec.topic}", spec.qos)], keepalive=lb.keepalive,
        session_expiry=lb.session_expiry, receive_maximum=lb.receive_maximum, protocol=lb.protocol,
    )
    intake = Intake(local)
    dispatcher = Dispatcher(
        spec, runtime=runtime, windows=windows, outbox=RemoteCommits(link), publish=local.publish,
        ack=intake.ack, deadletter_topic=a.deadletter_topic, max_payload=a.max_payload,
        batch_size=a.handler.batch_size, linger=a.handler.batch_linger, intake_watermark=local.watermark,
        checkpoint_key=part_key(f"{spec.name}@{spec.revision}", a.part),
        delivered={int(mid): bytes.fromhex(d) for mid, d in state.get("delivered", [])},
        delivered_key=part_key(spec.name, a.part),
    )
    intake.set_routes([(spec.topic, dispatcher)])
    return local, intake, dispatcher


@dataclass
class _Orders:
    """What the agent asked for: stop (``stopped``), leaving the share group first, and whether to drain."""

    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    leave: bool = False
    drain: bool = True

    async def listen(self, link: Link, serving: asyncio.Task[Any] | None) -> None:
        while (message := await link.receive()) is not None:
            if message.get("op") == "stop":
                self.leave = bool(message.get("leave"))
                self.stopped.set()
        # The agent is gone: nothing can be committed any more, so stop at once, draining or not; what is not
        # acknowledged stays in this worker's session.
        if self.stopped.is_set() and serving is not None:
            serving.cancel()
        self.drain = False
        self.stopped.set()


async def serve_worker(link: Link, a: Assignment, factory: Any = None) -> None:
    """Run the assignment until the agent says ``stop`` (drain) or the pipe ends (stop at once)."""
    orders = _Orders()
    listener = asyncio.create_task(orders.listen(link, asyncio.current_task()), name="worker.link")
    try:
        state = await link.request({"op": "state"})
        if factory is None:
            factory = await asyncio.to_thread(_docker_factory, a)
        runtime = (await start_anyway([a.handler], factory, a.runtime.health_timeout))[a.handler.name]
        try:
            await _run(link, a, runtime, _pipeline(link, a, runtime, state), orders)
        finally:
            await runtime.aclose()
    finally:
        listener.cancel()


async def _run(
    link: Link, a: Assignment, runtime: HandlerRuntime, parts: tuple[LocalBroker, Intake, Dispatcher], orders: _Orders
) -> None:
    local, intake, dispatcher = parts

    def report() -> None:
        link.send({"op": "stats", "counters": dispatcher.counters.as_dict(), "backlog": dispatcher.backlog,
                   "processed": runtime.stats.processed, "errors": runtime.stats.errors})

    async def reporting() -> None:
        while True:
            await asyncio.sleep(0.5)
            report()

    async with local:
        tasks = [asyncio.create_task(c, name=n) for c, n in (
            (intake.run(), "worker.intake"), (dispatcher.run(), "worker.dispatch"), (reporting(), "worker.stats"))]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await local.wait_connected()
        link.send({"op": "ready"})
        log.info("worker %s#p%d running", a.subscription.name, a.part)
        stopped = asyncio.create_task(orders.stopped.wait())
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():  # intake or dispatcher failed: the process ends, and the agent starts another
                stopped.cancel()
                task.result()
        if orders.leave and orders.drain:
            # Out of the share group first: what the broker dealt us before its UNSUBACK is read and drained.
            local.set_filters([])
            await asyncio.sleep(LEAVE_SETTLE)
        tasks[0].cancel()
        if orders.drain:
            await dispatcher.drain()
            report()
        for task in tasks:
            task.cancel()
        await dispatcher.aclose()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _main() -> int:
    link = await stdio_link()
    first = await link.first()
    if first is None:
        return 2
    assignment = Assignment.model_validate(first)
    logging.basicConfig(
        level=getattr(logging, assignment.log_level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s worker[{assignment.subscription.name}#p{assignment.part}] "
        "%(name)s: %(message)s",
    )
    await serve_worker(link, assignment)
    return 0


def main() -> int:
    """The entry point of ``edge-agent worker``: the agent directs a worker through its pipe, not signals."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return asyncio.run(_main())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
