"""``serve()``: wires broker intake, handler runtimes, dispatchers, the outbox and the uplink together.

Shutdown runs in two phases: intake stops and queues drain within the grace period (everything drained is
committed and acknowledged), then the rest is cancelled; what was not acknowledged stays in the broker's
persistent session and comes back on the next start. Only ``__main__`` installs signal handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent import __version__
from edge_agent.aggregation.windows import WindowSet
from edge_agent.broker import CloudBroker, Incoming, LocalBroker
from edge_agent.config import AgentConfig
from edge_agent.dispatcher import Dispatcher
from edge_agent.errors import OutboxError
from edge_agent.intake import Intake
from edge_agent.outbox import Outbox
from edge_agent.router import Router
from edge_agent.runtime.base import HandlerRuntime
from edge_agent.uplink import Uplink, status_payload
from edge_protocol.messages import HandlerReport, Reported, SubscriptionReport
from edge_protocol.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class AgentState:
    """What a running agent exposes to tests and its status endpoint."""

    dispatchers: dict[str, Dispatcher] = field(default_factory=dict)
    runtimes: dict[str, HandlerRuntime] = field(default_factory=dict)
    outbox: Outbox | None = None
    uplink: Uplink | None = None
    intake: LocalBroker | None = None

    alarms: set[str] = field(default_factory=set)

    def counters(self) -> dict[str, Any]:
        return {name: d.counters.as_dict() for name, d in self.dispatchers.items()}

    async def reported(self, device_id: str) -> Reported:
        """The reported state: handlers, counters, the outbox's loss ledger and alarms."""
        handlers = []
        for name, runtime in self.runtimes.items():
            handlers.append(HandlerReport(
                name=name,
                image=getattr(getattr(runtime, "spec", None), "image", ""),
                healthy=runtime.healthy,
                restarts=int(getattr(runtime, "restarts", 0)),
                container=getattr(runtime, "container_id", None),
            ))
        subs = {
            name: SubscriptionReport(
                **d.counters.as_dict(), backlog=d.backlog
            )
            for name, d in self.dispatchers.items()
        }
        losses: dict[str, dict[str, int]] = {}
        pending = 0
        if self.outbox is not None:
            try:
                losses = await self.outbox.losses()
                self.alarms.discard("outbox-unreadable")
            except OutboxError:
                self.alarms.add("outbox-unreadable")
            pending = self.outbox.pending
        return Reported(
            device=device_id,
            agent_version=__version__,
            handlers=handlers,
            subscriptions=subs,
            losses=losses,
            outbox_pending=pending,
            alarms=sorted(self.alarms),
            ts=time.time(),
        )


def _docker_runtimes(config: AgentConfig) -> dict[str, HandlerRuntime]:
    from edge_agent.runtime.docker import DockerHandler, docker_client  # the engine only when needed

    client = docker_client(config.docker_host)
    return {
        spec.name: DockerHandler(spec, client=client, device_id=config.device_id) for spec in config.handlers
    }


async def serve(
    config: AgentConfig,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    state: AgentState | None = None,
    runtimes: dict[str, HandlerRuntime] | None = None,
) -> None:
    """Run the agent until ``stop`` is set (or the task is cancelled)."""
    stop = stop or asyncio.Event()
    state = state if state is not None else AgentState()
    topics = Topics(config.cloud.prefix)
    async with Outbox(
        config.outbox_path,
        ttl=config.outbox.ttl,
        max_records=config.outbox.max_records,
        policy=config.outbox.policy,
        synchronous=config.outbox.synchronous,
    ) as outbox:
        state.outbox = outbox
        if runtimes is None:
            runtimes = await asyncio.to_thread(_docker_runtimes, config)
        state.runtimes = runtimes
        try:
            await _run(config, topics, outbox, runtimes, state, stop, ready)
        finally:
            await asyncio.gather(*(r.aclose() for r in runtimes.values()), return_exceptions=True)


def _intake_filters(config: AgentConfig) -> list[tuple[str, int]]:
    """Each distinct topic filter once, at the highest QoS any subscription asks of it."""
    qos: dict[str, int] = {}
    for spec in config.subscriptions:
        qos[spec.topic] = max(qos.get(spec.topic, 0), spec.qos)
    return sorted(qos.items())


def _local_broker(config: AgentConfig) -> LocalBroker:
    lb = config.local_broker
    return LocalBroker(
        host=lb.host,
        port=lb.port,
        client_id=config.client_id,
        subscriptions=_intake_filters(config),
        username=lb.username,
        password=lb.password,
        keepalive=lb.keepalive,
        session_expiry=lb.session_expiry,
        receive_maximum=lb.receive_maximum,
    )


async def _dispatchers(
    config: AgentConfig,
    topics: Topics,
    outbox: Outbox,
    runtimes: dict[str, HandlerRuntime],
    local: LocalBroker,
    ack: Callable[[Incoming], None],
    state: AgentState,
) -> dict[str, Dispatcher]:
    """One dispatcher per subscription, its open windows and delivered packet ids restored from the outbox."""
    checkpoints = await outbox.checkpoints()
    delivered = await outbox.delivered()
    handler_specs = {h.name: h for h in config.handlers}
    out: dict[str, Dispatcher] = {}
    for spec in config.subscriptions:
        windows = WindowSet(spec, config.device_id)
        snap = checkpoints.get(spec.name)
        if snap is not None and not windows.restore(snap):
            log.info("subscription %s changed since its checkpoint; its open windows start over", spec.name)
        dispatcher = Dispatcher(
            spec,
            runtime=runtimes[spec.handler],
            windows=windows,
            outbox=outbox,
            publish=local.publish,
            ack=ack,
            deadletter_topic=topics.deadletter(spec.name),
            max_payload=config.max_payload_bytes,
            batch_size=handler_specs[spec.handler].batch_size,
            intake_watermark=local.watermark,
            alarm=lambda name, on: (state.alarms.add if on else state.alarms.discard)(name),
        )
        dispatcher.delivered = delivered.get(spec.name, {})
        out[spec.name] = dispatcher
    return out


def _uplink(config: AgentConfig, topics: Topics, outbox: Outbox, state: AgentState) -> Uplink:
    cloud = CloudBroker(
        host=config.cloud.host,
        port=config.cloud.port,
        client_id=f"agent-{config.device_id}-uplink",
        username=config.cloud.username,
        password=config.cloud.password,
        keepalive=config.cloud.keepalive,
        will=(topics.status(config.device_id), status_payload(config.device_id, False)),
        reconnect_max=config.cloud.reconnect_max,
    )
    return Uplink(
        cloud=cloud,
        outbox=outbox,
        device_id=config.device_id,
        topics=topics,
        batch_records=config.cloud.batch_records,
        max_unacked=config.cloud.max_unacked,
        resend_after=config.cloud.resend_after,
        reporter=lambda: _report_bytes(state, config.device_id),
        report_interval=config.cloud.report_interval,
    )


async def _run(
    config: AgentConfig,
    topics: Topics,
    outbox: Outbox,
    runtimes: dict[str, HandlerRuntime],
    state: AgentState,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
) -> None:
    for name, runtime in runtimes.items():
        try:
            await runtime.start()
        except Exception as exc:  # one broken handler must not stop the others
            log.error("handler %s did not start (%s); its events are retried and dead-lettered", name, exc)
    local = state.intake = _local_broker(config)
    intake = Intake(local)
    state.dispatchers = await _dispatchers(config, topics, outbox, runtimes, local, intake.ack, state)
    intake.router = Router([(d.spec.topic, d) for d in state.dispatchers.values()])
    uplink = state.uplink = _uplink(config, topics, outbox, state) if config.cloud.enabled else None

    async def expire_loop() -> None:
        while True:
            await asyncio.sleep(60)
            expired = await outbox.expire()
            if expired:
                log.warning("outbox: %d records expired before the hub acknowledged them", expired)

    async with local, asyncio.TaskGroup() as tg:
        workers = [
            tg.create_task(d.run(), name=f"agent.dispatch[{name}]") for name, d in state.dispatchers.items()
        ]
        intake_task = tg.create_task(intake.run(), name="agent.intake")
        side = [tg.create_task(expire_loop(), name="agent.outbox-expiry")]
        if uplink is not None:
            side.append(tg.create_task(uplink.run(), name="agent.uplink"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await local.wait_connected()
        if ready is not None:
            ready.set()
        log.info("agent %s running %d subscriptions", config.device_id, len(state.dispatchers))
        await stop.wait()
        log.info("stopping: intake off, draining for up to %.0fs", config.grace_period)
        intake_task.cancel()
        started = time.monotonic()
        try:
            async with asyncio.timeout(config.grace_period):
                await asyncio.gather(*(d.drain() for d in state.dispatchers.values()))
        except TimeoutError:
            log.warning("grace period over after %.1fs; unacknowledged events stay in the broker session",
                        time.monotonic() - started)
        for task in workers + side:
            task.cancel()
        if uplink is not None:
            await uplink.announce_offline()


async def _report_bytes(state: AgentState, device_id: str) -> bytes:
    return (await state.reported(device_id)).model_dump_json().encode()
