"""``serve()``: wires broker intake, the pipeline of handlers and subscriptions, the outbox and the uplink.

Standalone, the pipeline runs the config's handlers and subscriptions; managed (a hub key in the config), it
runs the last desired state it applied and whatever the hub sends next. Shutdown runs in two phases: intake
stops and queues drain within the grace period (everything drained is committed and acknowledged), then the
rest is cancelled; what was not acknowledged stays in the broker's persistent session for the next start.
Only ``__main__`` installs signal handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edge_agent.broker import CloudBroker, LocalBroker, client_tls
from edge_agent.config import AgentConfig
from edge_agent.intake import Intake
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline, RuntimeFactory, intake_filters
from edge_agent.reconciler import Reconciler
from edge_agent.runs import next_run
from edge_agent.runtime.base import HandlerRuntime
from edge_agent.runtime.pool import ReplicaPool
from edge_agent.state import AgentState
from edge_agent.status import StatusServer
from edge_agent.uplink import Uplink, status_payload
from edge_agent.workers.group import WorkerGroup
from edge_agent.workers.link import Assignment, end_session
from edge_protocol.desired import load_public_key
from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from edge_protocol.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class Engine:
    """The Docker side of the agent: how handlers are made, and the image garbage collector."""

    factory: RuntimeFactory
    on_image: Callable[[str, str | None], Awaitable[None]] | None = None
    collect: Callable[[], Awaitable[None]] | None = None
    pull: Callable[[HandlerSpec], Awaitable[None]] | None = None
    """The pull step of a desired-state update: the image present (pulled and verified), or an exception."""
    processes: bool = False
    """Subscriptions with ``workers > 1`` run on worker processes (which start their own containers); an
    in-process engine (tests) runs them in the agent, on one worker."""


def _docker_engine(config: AgentConfig) -> Engine:
    import docker.errors

    from edge_agent.errors import HandlerStartError
    from edge_agent.images import ImageLedger, collect_garbage
    from edge_agent.runtime.containers import docker_client, ensure_image, remove_device_containers
    from edge_agent.runtime.docker import DockerHandler, RestartPolicy

    client = docker_client(config.docker_host)
    left = remove_device_containers(client, config.device_id)
    if left:
        log.info("removed %d containers left by an earlier run of this device's agent", left)
    rt = config.runtime
    policy = RestartPolicy(base=rt.restart_backoff, max=rt.restart_max, max_failures=rt.max_failures)
    ledger = ImageLedger(config.data_dir / "images.sqlite")

    async def on_image(handler: str, ref: str | None) -> None:
        if ref is None:
            await asyncio.to_thread(ledger.retired, handler)
        else:
            await asyncio.to_thread(ledger.in_use, handler, ref)

    async def collect() -> None:
        await asyncio.to_thread(collect_garbage, client, ledger, config.runtime.image_grace)

    def make(spec: HandlerSpec) -> HandlerRuntime:
        def replica(i: int) -> HandlerRuntime:
            return DockerHandler(
                spec,
                client=client,
                device_id=config.device_id,
                replica=i,
                restart=policy,
                connect_timeout=rt.health_timeout,
                socket_root=rt.socket_dir,
            )

        if spec.replicas == 1 and not spec.max_replicas:
            return replica(0)
        return ReplicaPool(spec, replica)

    def pull_now(spec: HandlerSpec) -> None:
        try:
            client.images.get(spec.image)
            return
        except docker.errors.ImageNotFound:
            pass
        # The low-level stream, because it carries the engine's reason (a layer failing its digest check, say),
        # which docker-py's images.pull() drops.
        try:
            stream = client.api.pull(spec.image, stream=True, decode=True)
            errors = [str(line["error"]) for line in stream if isinstance(line, dict) and line.get("error")]
        except docker.errors.APIError as exc:
            errors = [str(exc.explanation or exc)]
        if errors:
            raise HandlerStartError(spec.name, f"pull of {spec.image} failed: {errors[-1]}")
        ensure_image(client, spec)

    async def pull(spec: HandlerSpec) -> None:
        await asyncio.to_thread(pull_now, spec)

    return Engine(make, on_image, collect, pull, processes=True)


async def serve(
    config: AgentConfig,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    state: AgentState | None = None,
    runtime_factory: RuntimeFactory | None = None,
) -> None:
    """Run the agent until ``stop`` is set (or the task is cancelled)."""
    stop = stop or asyncio.Event()
    state = state if state is not None else AgentState()
    async with Outbox(
        config.outbox_path,
        ttl=config.outbox.ttl,
        max_records=config.outbox.max_records,
        policy=config.outbox.policy,
        synchronous=config.outbox.synchronous,
    ) as outbox:
        state.outbox = outbox
        state.run = await asyncio.to_thread(next_run, config.data_dir)
        engine = Engine(runtime_factory) if runtime_factory else await asyncio.to_thread(_docker_engine, config)
        await _run(config, outbox, engine, state, stop, ready)


def _local_broker(config: AgentConfig) -> LocalBroker:
    lb = config.local_broker
    return LocalBroker(
        host=lb.host,
        port=lb.port,
        client_id=config.client_id,
        # A subscription on several workers is read by its workers' sessions, not the agent's (edge_agent.workers).
        subscriptions=intake_filters([s for s in config.subscriptions if s.workers == 1]),
        username=lb.username,
        password=lb.password,
        keepalive=lb.keepalive,
        session_expiry=lb.session_expiry,
        receive_maximum=lb.receive_maximum,
        protocol=lb.protocol,
        broker_config=lb.broker_config,
    )


def _worker_groups(config: AgentConfig, topics: Topics, outbox: Outbox) -> Callable[..., WorkerGroup]:
    """How the pipeline makes the worker processes of a subscription with ``workers > 1``."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())

    def assign(spec: SubscriptionSpec, handler: HandlerSpec, part: int) -> Assignment:
        return Assignment(
            device_id=config.device_id, part=part, workers=spec.workers, subscription=spec, handler=handler,
            client_id=f"{config.client_id}.{spec.name}.p{part}", share_group=f"{config.device_id}.{spec.name}",
            local_broker=config.local_broker, runtime=config.runtime, docker_host=config.docker_host,
            max_payload=config.max_payload_bytes, deadletter_topic=topics.deadletter(spec.name), log_level=level,
        )

    def make(spec: SubscriptionSpec, handler: HandlerSpec) -> WorkerGroup:
        return WorkerGroup(spec, handler, outbox=outbox, device_id=config.device_id, assign=assign,
                           end_session=lambda client_id: end_session(config.local_broker, client_id))

    return make


def _cloud_tls(config: AgentConfig) -> ssl.SSLContext | None:
    c = config.cloud
    if c.tls_ca is None:
        return None
    return client_tls(str(c.tls_ca), str(c.tls_cert) if c.tls_cert else None, str(c.tls_key) if c.tls_key else None)


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
        tls=_cloud_tls(config),
    )

    async def report() -> bytes:
        return (await state.reported(config.device_id)).wire()

    async def on_desired(payload: bytes) -> None:
        if state.reconciler is not None:
            await state.reconciler.on_message(payload)

    return Uplink(
        cloud=cloud,
        outbox=outbox,
        device_id=config.device_id,
        topics=topics,
        batch_records=config.cloud.batch_records,
        max_unacked=config.cloud.max_unacked,
        resend_after=config.cloud.resend_after,
        reporter=report,
        report_interval=config.cloud.report_interval,
        on_desired=on_desired if config.managed else None,
    )


def _reconciler(config: AgentConfig, pipeline: Pipeline, uplink: Uplink | None, state: AgentState) -> Reconciler:
    return Reconciler(
        device_id=config.device_id,
        public_key=load_public_key(config.public_key_text() or ""),
        store_path=config.data_dir / "desired.json",
        pipeline=pipeline,
        on_change=uplink.report_soon if uplink is not None else lambda: None,
        admit_tags=config.admits_tags,
        clock_tolerance=config.desired.clock_tolerance,
        require_expiry=config.desired.require_expiry,
        alarm=state.alarm,
    )


def _expiry_watch(tg: asyncio.TaskGroup, state: AgentState, uplink: Uplink | None) -> list[asyncio.Task[None]]:
    """The task that raises the desired-expired alarm when the running desired state expires (managed only)."""
    if state.reconciler is None or uplink is None:
        return []
    return [tg.create_task(state.reconciler.checks.watch(uplink.report_soon), name="agent.desired-expiry")]


async def _start_state(config: AgentConfig, pipeline: Pipeline, uplink: Uplink | None, state: AgentState) -> None:
    """Run the last good desired state (managed) or the configured one; then emit the windows of every
    checkpoint that no subscription now running owns (``edge_agent.orphans``)."""
    if config.managed:
        state.reconciler = _reconciler(config, pipeline, uplink, state)
        await state.reconciler.load_stored()
    else:
        await pipeline.apply(config.handlers, config.subscriptions, gated=False)
        await pipeline.flush_orphans()


async def _run(
    config: AgentConfig,
    outbox: Outbox,
    engine: Engine,
    state: AgentState,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
) -> None:
    topics = Topics(config.cloud.prefix)
    local = state.intake = _local_broker(config)
    intake = Intake(local)
    uplink = state.uplink = _uplink(config, topics, outbox, state) if config.cloud.enabled else None

    async def housekeeping() -> None:
        while True:
            await asyncio.sleep(60)
            expired = await outbox.expire()
            if expired:
                log.warning("outbox: %d records expired before the hub acknowledged them", expired)
            if engine.collect is not None:
                await engine.collect()

    status = None
    if config.status.listen:
        status = StatusServer(state, config.device_id, config.status.listen, asyncio.get_running_loop())
    async with local, asyncio.TaskGroup() as tg:
        pipeline = state.pipeline = Pipeline(
            device_id=config.device_id,
            topics=topics,
            outbox=outbox,
            local=local,
            intake=intake,
            runtime_factory=engine.factory,
            max_payload=config.max_payload_bytes,
            alarm=state.alarm,
            task_group=tg,
            on_image=engine.on_image,
            health_timeout=config.runtime.health_timeout,
            probation=config.runtime.probation,
            pull=engine.pull,
            workers=_worker_groups(config, topics, outbox) if engine.processes else None,
        )
        try:
            await _start_state(config, pipeline, uplink, state)
            intake_task = tg.create_task(intake.run(), name="agent.intake")
            side = [tg.create_task(housekeeping(), name="agent.housekeeping"), *_expiry_watch(tg, state, uplink)]
            if uplink is not None:
                side.append(tg.create_task(uplink.run(), name="agent.uplink"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await local.wait_connected()
            if ready is not None:
                ready.set()
            log.info("agent %s running %d subscriptions", config.device_id, len(pipeline.dispatchers))
            await stop.wait()
            log.info("stopping: intake off, draining for up to %.0fs", config.grace_period)
            intake_task.cancel()
            started = time.monotonic()
            try:
                async with asyncio.timeout(config.grace_period):
                    await pipeline.drain()
            except TimeoutError:
                log.warning("grace period over after %.1fs; unacknowledged events stay in the broker session",
                            time.monotonic() - started)
            if uplink is not None:
                await uplink.announce_offline()
            for task in side:
                task.cancel()
        finally:
            if state.reconciler is not None:
                state.reconciler.close()
            await pipeline.aclose()
            if status is not None:
                status.shutdown()
