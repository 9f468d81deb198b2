"""The handlers and subscriptions a device runs, changed in place without restarting the agent.

``apply()`` moves from what runs to what is wanted in an order that loses no event: handlers that are new or
changed start before the old ones stop (dispatchers switch between batches); new dispatchers are routed to
before the ones they replace are retired; a retired dispatcher drains its queue and emits its open windows
(ids carry the old revision, so they cannot collide with the new subscription's).

A gated ``apply`` (the hub's desired state) is all-or-nothing (:mod:`edge_agent.staging`): every new or changed
handler is pulled, started and health-checked before anything switches, and a failure refuses the whole
document with nothing changed. After the switch the document is on trial for ``probation``: the replaced
runtimes stay up and the replaced dispatchers stay open (routed nothing, their windows kept), and a crash-loop
of any new runtime puts the whole previous state back, handlers and subscriptions (``on_trial_end``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from edge_agent.aggregation.windows import WindowSet
from edge_agent.broker import LocalBroker
from edge_agent.dispatcher import Dispatcher
from edge_agent.intake import Intake
from edge_agent.orphans import checkpoint_key, flush_orphans
from edge_agent.outbox import Outbox
from edge_agent.runtime.base import HandlerRuntime
from edge_agent.staging import Pull, Trial, TrialEnd, UpdateRefused, pause_at, stage, start_anyway
from edge_agent.workers.group import WorkerGroup, switch_groups
from edge_agent.workers.link import part_key
from edge_protocol.specs import HandlerSpec, SubscriptionSpec
from edge_protocol.topics import Topics

log = logging.getLogger(__name__)

WATCH_ALARM = "probation-watch"
RuntimeFactory = Callable[[HandlerSpec], HandlerRuntime]
GroupFactory = Callable[[SubscriptionSpec, HandlerSpec], WorkerGroup]


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
        pull: Pull | None = None,
        workers: GroupFactory | None = None,
    ) -> None:
        """``workers`` makes the worker processes of a subscription with ``workers > 1``; without it (tests
        with in-process runtimes) such a subscription runs in the agent on one worker."""
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
        self._pull = pull
        self.runtimes: dict[str, HandlerRuntime] = {}
        self.handler_specs: dict[str, HandlerSpec] = {}
        self.dispatchers: dict[str, Dispatcher] = {}
        self.groups: dict[str, WorkerGroup] = {}
        """Subscriptions on several workers (edge_agent.workers), by name."""
        self._workers = workers
        self._tasks: dict[Dispatcher, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._health_timeout = health_timeout
        self._probation_time = probation
        self.trial: Trial | None = None
        self.on_trial_end: Callable[[TrialEnd], Awaitable[None]] | None = None
        """Called (under the pipeline's lock) when a trial passes or is reverted."""
        self._watcher: asyncio.Task[None] | None = None
        self.update_errors: dict[str, tuple[str, str]] = {}
        """handler -> (image, reason) of the last update that was refused; the previous state kept running."""
        self._remembered: set[str] = set()
        self.watch_errors = 0
        """Checks of the probation watch that raised (logged and alarmed, never fatal)."""

    async def apply(
        self,
        handlers: list[HandlerSpec],
        subscriptions: list[SubscriptionSpec],
        *,
        gated: bool = True,
        tag: object = None,
    ) -> bool:
        """Run exactly ``handlers`` and ``subscriptions`` from now on; True while the change is on trial.

        Gated, :class:`UpdateRefused` when a new or changed handler fails to pull, start or answer (nothing
        changed). Not gated (the state stored or configured, at start), every handler is switched to even if
        it does not answer yet: there is nothing older to stay on.
        """
        async with self._lock:
            wanted = {h.name: h for h in handlers}
            changed = [s for name, s in wanted.items() if self.handler_specs.get(name) != s]
            if not gated:
                fresh = await start_anyway(changed, self._factory, self._health_timeout)
            else:
                try:
                    fresh = await stage(changed, self._factory, self._pull, self._health_timeout)
                except UpdateRefused as exc:
                    log.error("desired state refused at step %s: %s", exc.step, exc)
                    self.update_errors[exc.handler] = (exc.image, exc.reason)
                    raise
            await self._remember(subscriptions)
            trial = self.trial
            if trial is None and gated and fresh and self._probation_time > 0:
                trial = Trial(dict(self.handler_specs), dict(self.runtimes), dict(self.dispatchers), 0.0)
            dropped = await self._switch_to(wanted, fresh, subscriptions, trial, pause=gated)
            if trial is not None:
                self._begin_or_extend(trial, tag)
            for runtime in dropped:
                if trial is None or not trial.keeps(runtime):
                    await runtime.aclose()
            return self.trial is not None

    async def _switch_to(
        self,
        wanted: dict[str, HandlerSpec],
        fresh: dict[str, HandlerRuntime],
        subscriptions: list[SubscriptionSpec],
        trial: Trial | None,
        *,
        pause: bool = False,
    ) -> list[HandlerRuntime]:
        """Switch to ``fresh`` runtimes, then to ``subscriptions``; the runtimes no longer serving. Dispatchers
        replaced are retired, unless ``trial`` keeps them (open, routed nothing) for a revert."""
        dropped: list[HandlerRuntime] = []
        for name, runtime in fresh.items():
            old = self.runtimes.get(name)
            if old is not None and old is not runtime:
                dropped.append(old)
            self._switch(name, wanted[name], runtime)
            self.update_errors.pop(name, None)
            if self._on_image is not None:
                await self._on_image(name, wanted[name].image)
        await self._switch_subscriptions(subscriptions, trial, pause=pause)
        for name in [n for n in self.runtimes if n not in wanted]:
            dropped.append(self.runtimes.pop(name))
            del self.handler_specs[name]
            self.update_errors.pop(name, None)
            if self._on_image is not None:
                await self._on_image(name, None)
        return dropped

    async def _switch_subscriptions(
        self, subscriptions: list[SubscriptionSpec], trial: Trial | None, *, pause: bool
    ) -> None:
        if self._workers is not None:
            # Worker groups are switched first (not put on trial): a subscription going from one worker to
            # several is read by both for a moment rather than by none.
            multi = [s for s in subscriptions if s.workers > 1]
            await switch_groups(self.groups, multi, self.handler_specs, self._workers, self._health_timeout)
            subscriptions = [s for s in subscriptions if s.workers == 1]
        wanted_subs = {s.name: s for s in subscriptions}
        retiring = [d for name, d in self.dispatchers.items() if wanted_subs.get(name) != d.spec]
        current = {name: d.spec for name, d in self.dispatchers.items()}
        adding = [s for s in subscriptions if current.get(s.name) != s]
        for spec in list(adding) if trial is not None else []:
            kept = trial.base_dispatchers.get(spec.name) if trial is not None else None
            if kept is not None and kept.spec == spec:  # back to the base's subscription: it takes over again
                kept.switch_runtime(self.runtimes[spec.handler])
                self.dispatchers[spec.name] = kept
                adding.remove(spec)
        await self._add_dispatchers(adding)
        for d in retiring:
            if self.dispatchers.get(d.spec.name) is d:
                del self.dispatchers[d.spec.name]
        self._route()
        if pause:
            await pause_at("mid-switch")
        for d in retiring:
            if trial is not None and trial.keeps_dispatcher(d):
                log.info("subscription %s (revision %s) off while the update is on trial", d.spec.name, d.spec.revision)
            else:
                await self._retire(d)

    def _route(self) -> None:
        self._intake.set_routes([(d.spec.topic, d) for d in self.dispatchers.values()])
        self._local.set_filters(intake_filters([d.spec for d in self.dispatchers.values()]))

    def _begin_or_extend(self, trial: Trial, tag: object) -> None:
        """Watch every runtime that serves and is not the base's, for the probation time from now."""
        watched = {}
        for name, runtime in self.runtimes.items():
            if trial.keeps(runtime):
                continue
            earlier = trial.watched.get(name)
            watched[name] = earlier if earlier is not None and earlier[0] is runtime else (runtime, runtime.restarts)
        trial.watched = watched
        trial.tag = tag
        trial.until = asyncio.get_running_loop().time() + self._probation_time
        self.trial = trial
        if self._watcher is None:
            self._watcher = self._tg.create_task(self._watch_trial(), name="agent.probation")

    def _switch(self, name: str, spec: HandlerSpec, runtime: HandlerRuntime) -> None:
        """Dispatchers take their next batch to ``runtime``; the batch in flight finishes where it is."""
        self.runtimes[name] = runtime
        self.handler_specs[name] = spec
        for d in self.dispatchers.values():
            if d.spec.handler == name:
                d.switch_runtime(runtime)

    async def _watch_trial(self) -> None:
        """Every 0.5 s: revert a trial whose runtime crash-loops, pass one whose time is up. A check that raises
        is logged, counted (``watch_errors``) and alarmed (``probation-watch``, until a check goes through): it
        runs in the agent's task group, and must not stop the agent."""
        paused = False
        failing = False
        while True:
            await asyncio.sleep(0.5)
            if self.trial is not None and not paused:
                paused = True
                await pause_at("probation")
            try:
                paused = await self._check_trial(paused)
            except Exception:
                self.watch_errors += 1
                log.exception("probation watch: check failed (%d so far); it goes on", self.watch_errors)
                if not failing:
                    failing = True
                    self._alarm(WATCH_ALARM, True)
                continue
            if failing:
                failing = False
                self._alarm(WATCH_ALARM, False)

    async def _check_trial(self, paused: bool) -> bool:
        async with self._lock:
            trial = self.trial
            if trial is None:
                return False
            refusal = trial.crash_looping()
            if refusal is not None:
                await self._revert(trial, refusal)
            elif asyncio.get_running_loop().time() >= trial.until:
                await self._pass(trial)
            return paused

    async def _pass(self, trial: Trial) -> None:
        self.trial = None
        serving = set(map(id, self.runtimes.values()))
        for runtime in trial.base_runtimes.values():
            if id(runtime) not in serving:
                await runtime.aclose()
        for d in trial.base_dispatchers.values():
            if self.dispatchers.get(d.spec.name) is not d:
                await self._retire(d)
        log.info("update passed its probation")
        if self.on_trial_end is not None:
            await self.on_trial_end(TrialEnd(trial.tag, None))

    async def _revert(self, trial: Trial, refusal: UpdateRefused) -> None:
        """Back to the trial's base, handlers and subscriptions: its dispatchers route again, the trial's retire."""
        log.error("handler %s: %s; the whole update is reverted", refusal.handler, refusal.reason)
        self.trial = None
        back = {n: r for n, r in trial.base_runtimes.items() if self.runtimes.get(n) is not r}
        for name, runtime in back.items():
            self._switch(name, trial.base_specs[name], runtime)
            if self._on_image is not None:
                await self._on_image(name, trial.base_specs[name].image)
        leaving = [d for name, d in self.dispatchers.items() if trial.base_dispatchers.get(name) is not d]
        self.dispatchers = dict(trial.base_dispatchers)
        for name, runtime in self.runtimes.items():
            for d in self.dispatchers.values():
                if d.spec.handler == name and d.runtime is not runtime:
                    d.switch_runtime(runtime)
        self._route()
        for d in leaving:  # what they hold queued goes to the previous version, if it has their handler
            if d.spec.handler in trial.base_runtimes:
                d.switch_runtime(trial.base_runtimes[d.spec.handler])
            await self._retire(d)
        for name in [n for n in self.runtimes if n not in trial.base_specs]:
            del self.runtimes[name], self.handler_specs[name]
            if self._on_image is not None:
                await self._on_image(name, None)
        self.update_errors[refusal.handler] = (refusal.image, refusal.reason)
        await asyncio.gather(*(r.aclose() for r, _ in trial.watched.values()), return_exceptions=True)
        if self.on_trial_end is not None:
            await self.on_trial_end(TrialEnd(trial.tag, refusal))

    async def flush_orphans(self, known: list[SubscriptionSpec] | None = None) -> int:
        """At start: emit the windows of every checkpoint no running subscription owns (a document switched to,
        then left by a crash before its trial ended): their events were acknowledged on its strength."""
        async with self._lock:
            running = {checkpoint_key(d.spec) for d in self.dispatchers.values()}
            if self.trial is not None:
                running.update(checkpoint_key(d.spec) for d in self.trial.base_dispatchers.values())
            for g in self.groups.values():
                running.update(part_key(checkpoint_key(g.spec), k) for k in range(g.spec.workers))
            return await flush_orphans(self._outbox, self._device, running, known or [])

    async def _remember(self, subscriptions: list[SubscriptionSpec]) -> None:
        """Each revision's spec in the outbox before it can checkpoint: an orphan of it can then be emitted."""
        new = {checkpoint_key(s): s for s in subscriptions if checkpoint_key(s) not in self._remembered}
        if new:
            await self._outbox.remember_specs({k: s.model_dump(mode="json") for k, s in new.items()})
            self._remembered.update(new)

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
                linger=self.handler_specs[spec.handler].batch_linger,
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
        await asyncio.gather(*(d.drain() for d in self._tasks), *(g.drain() for g in self.groups.values()))

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*(d.aclose() for d in self._tasks), *(g.aclose() for g in self.groups.values()))
        if self._watcher is not None:
            self._watcher.cancel()
        runtimes = {id(r): r for r in self.runtimes.values()}
        if self.trial is not None:
            runtimes.update((id(r), r) for r in self.trial.base_runtimes.values())
        await asyncio.gather(*(r.aclose() for r in runtimes.values()), return_exceptions=True)
