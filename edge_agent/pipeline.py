"""The handlers and subscriptions a device runs, changed in place without restarting the agent.

``apply()`` moves from what runs to what is wanted in an order that loses no event: handlers that are new or
changed start before the old ones stop (dispatchers switch between batches); new dispatchers are routed to
before the ones they replace are retired; a retired dispatcher drains its queue and emits its open windows
(ids carry the old revision, so they cannot collide with the new subscription's).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edge_agent.aggregation.windows import WindowSet
from edge_agent.broker import LocalBroker
from edge_agent.dispatcher import Dispatcher
from edge_agent.intake import Intake
from edge_agent.outbox import Outbox
from edge_agent.runtime.base import HandlerRuntime
from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from edge_protocol.topics import Topics

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[HandlerSpec], HandlerRuntime]


def intake_filters(subscriptions: list[SubscriptionSpec]) -> list[tuple[str, int]]:
    """Each distinct topic filter once, at the highest QoS any subscription asks of it."""
    qos: dict[str, int] = {}
    for spec in subscriptions:
        qos[spec.topic] = max(qos.get(spec.topic, 0), spec.qos)
    return sorted(qos.items())


class Pipeline:
    """Owns the runtimes and dispatchers; ``apply`` reconciles them with a set of specs."""

    def __init__(
        self,
        *,
        device_id: str,
        topics: Topics,
        outbox: Outbox,
        local: LocalBroker,
        intake: Intake,
        runtime_factory: RuntimeFactory,
        max_payload: int,
        alarm: Callable[[str, bool], None],
        task_group: asyncio.TaskGroup,
        on_image: Callable[[str, str | None], Awaitable[None]] | None = None,
        health_timeout: float = 30.0,
        probation: float = 30.0,
    ) -> None:
        self._device = device_id
        self._topics = topics
        self._outbox = outbox
        self._local = local
        self._intake = intake
        self._factory = runtime_factory
        self._max_payload = max_payload
        self._alarm = alarm
        self._tg = task_group
        self._on_image = on_image
        self.runtimes: dict[str, HandlerRuntime] = {}
        self.handler_specs: dict[str, HandlerSpec] = {}
        self.dispatchers: dict[str, Dispatcher] = {}
        self._tasks: dict[Dispatcher, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._health_timeout = health_timeout
        self._probation_time = probation
        self._probation: dict[str, Probation] = {}
        self._watcher: asyncio.Task[None] | None = None
        self.update_errors: dict[str, tuple[str, str]] = {}
        """handler -> (image, reason) of the last update that was refused; the previous image kept running."""

    async def apply(self, handlers: list[HandlerSpec], subscriptions: list[SubscriptionSpec]) -> None:
        """Run exactly ``handlers`` and ``subscriptions`` from now on."""
        async with self._lock:
            wanted_handlers = {h.name: h for h in handlers}
            wanted_subs = {s.name: s for s in subscriptions}
            replaced = await self._start_handlers(wanted_handlers)
            retiring = [d for name, d in self.dispatchers.items() if wanted_subs.get(name) != d.spec]
            current = {name: d.spec for name, d in self.dispatchers.items()}
            await self._add_dispatchers([s for s in subscriptions if current.get(s.name) != s])
            for d in retiring:
                if self.dispatchers.get(d.spec.name) is d:
                    del self.dispatchers[d.spec.name]
            self._intake.set_routes([(d.spec.topic, d) for d in self.dispatchers.values()])
            self._local.set_filters(intake_filters([d.spec for d in self.dispatchers.values()]))
            for d in retiring:
                await self._retire(d)
            for name in [n for n in self.runtimes if n not in wanted_handlers]:
                replaced.append(self.runtimes.pop(name))
                del self.handler_specs[name]
                self.update_errors.pop(name, None)
                if name in self._probation:
                    replaced.append(self._probation.pop(name).old)
                if self._on_image is not None:
                    await self._on_image(name, None)
            for runtime in replaced:
                await runtime.aclose()

    async def _start_handlers(self, wanted: dict[str, HandlerSpec]) -> list[HandlerRuntime]:
        """Start new and changed handlers; switch dispatchers to them; return the runtimes to close now.

        An update (a handler that already runs) must pull, start and answer a health ping before it takes the
        stream; otherwise the running version stays and the refusal is reported. After the switch the old
        version stays up for the probation time, and takes the stream back if the new one crash-loops.
        """
        replaced: list[HandlerRuntime] = []
        for name, spec in wanted.items():
            if self.handler_specs.get(name) == spec:
                continue
            if name in self._probation:
                replaced.append(self._probation.pop(name).old)
            old = self.runtimes.get(name)
            runtime = self._factory(spec)
            problem = await self._start_checked(runtime)
            if problem is not None and old is not None:
                log.error("handler %s: update to %s refused (%s); the running version stays", name, spec.image, problem)
                replaced.append(runtime)
                self.update_errors[name] = (spec.image, problem)
                continue
            if problem is not None:
                log.error("handler %s did not start (%s); its events are retried and dead-lettered", name, problem)
            self.update_errors.pop(name, None)
            self._switch(name, spec, runtime)
            if self._on_image is not None:
                await self._on_image(name, spec.image)
            if old is not None and problem is None and self._probation_time > 0:
                loop = asyncio.get_running_loop()
                self._probation[name] = Probation(old, loop.time() + self._probation_time, runtime.restarts)
                if self._watcher is None:
                    self._watcher = self._tg.create_task(self._watch_probation(), name="agent.probation")
            elif old is not None:
                replaced.append(old)
        return replaced

    async def _start_checked(self, runtime: HandlerRuntime) -> str | None:
        """None when ``runtime`` started and answered a health ping in time, else why not."""
        try:
            await runtime.start()
        except Exception as exc:  # any start failure refuses the update; its text is the reported reason
            return f"start failed: {exc}"
        try:
            async with asyncio.timeout(self._health_timeout):
                if await runtime.ping():
                    return None
        except TimeoutError:
            pass
        return f"no answer to the health ping within {self._health_timeout:g}s"

    def _switch(self, name: str, spec: HandlerSpec, runtime: HandlerRuntime) -> None:
        """Dispatchers take their next batch to ``runtime``; the batch in flight finishes where it is."""
        self.runtimes[name] = runtime
        self.handler_specs[name] = spec
        for d in self.dispatchers.values():
            if d.spec.handler == name:
                d.switch_runtime(runtime)

    async def _watch_probation(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            async with self._lock:
                now = asyncio.get_running_loop().time()
                for name, probation in list(self._probation.items()):
                    new = self.runtimes.get(name)
                    if new is not None and (new.restarts > probation.restarts or new.state == "failed"):
                        await self._revert(name, probation, new)
                    elif now >= probation.until:
                        del self._probation[name]
                        await probation.old.aclose()

    async def _revert(self, name: str, probation: Probation, new: HandlerRuntime) -> None:
        bad = self.handler_specs[name]
        log.error("handler %s: %s crash-loops after the switch; back to the previous version", name, bad.image)
        restarts = new.restarts - probation.restarts
        self.update_errors[name] = (bad.image, f"crash-loop: {restarts} restarts within the probation time")
        old_spec = probation.old.spec
        self._switch(name, old_spec, probation.old)
        del self._probation[name]
        if self._on_image is not None:
            await self._on_image(name, old_spec.image)
        await new.aclose()

    async def _add_dispatchers(self, specs: list[SubscriptionSpec]) -> None:
        if not specs:
            return
        checkpoints = await self._outbox.checkpoints()
        delivered = await self._outbox.delivered()
        for spec in specs:
            windows = WindowSet(spec, self._device)
            key = checkpoint_key(spec)
            snap = checkpoints.get(key)
            if snap is not None:
                windows.restore(snap)
            dispatcher = Dispatcher(
                spec,
                runtime=self.runtimes[spec.handler],
                windows=windows,
                outbox=self._outbox,
                publish=self._local.publish,
                ack=self._intake.ack,
                deadletter_topic=self._topics.deadletter(spec.name),
                max_payload=self._max_payload,
                batch_size=self.handler_specs[spec.handler].batch_size,
                intake_watermark=self._local.watermark,
                alarm=self._alarm,
                checkpoint_key=key,
                delivered=delivered.get(spec.name, {}),
            )
            self.dispatchers[spec.name] = dispatcher
            self._tasks[dispatcher] = self._tg.create_task(dispatcher.run(), name=f"agent.dispatch[{spec.name}]")
            log.info("subscription %s (revision %s) on %s -> %s", spec.name, spec.revision, spec.topic, spec.handler)

    async def _retire(self, dispatcher: Dispatcher) -> None:
        await dispatcher.retire()
        task = self._tasks.pop(dispatcher, None)
        if task is not None:
            task.cancel()
        log.info("subscription %s (revision %s) retired", dispatcher.spec.name, dispatcher.spec.revision)

    async def drain(self) -> None:
        """Shutdown: process what is queued; open windows stay checkpointed for the next start."""
        await asyncio.gather(*(d.drain() for d in self.dispatchers.values()))

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*(d.aclose() for d in self._tasks))
        if self._watcher is not None:
            self._watcher.cancel()
        runtimes = [*self.runtimes.values(), *(p.old for p in self._probation.values())]
        await asyncio.gather(*(r.aclose() for r in runtimes), return_exceptions=True)


@dataclass(slots=True)
class Probation:
    """The version a switch replaced, kept running until ``until`` in case the new one crash-loops."""

    old: HandlerRuntime
    until: float
    restarts: int


def checkpoint_key(spec: SubscriptionSpec) -> str:
    """Checkpoints are per revision: a changed subscription never restores the old one's windows."""
    return f"{spec.name}@{spec.revision}"
