"""``AgentState``: what a running agent exposes to tests, to its status endpoint and to its reported state.

Its own module so that the readers of the state (status, metrics) and the code that fills it (agent) do not
import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.broker import LocalBroker
from edge_agent.counters import SubscriptionCounters
from edge_agent.dispatcher import Dispatcher
from edge_agent.errors import OutboxError
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline
from edge_agent.reconciler import Reconciler
from edge_agent.runtime.base import HandlerRuntime
from edge_agent.uplink import Uplink
from edge_protocol.clocks import wall_clock
from edge_protocol.messages import HandlerReport, Reported, SubscriptionReport


class Counted(Protocol):
    """A subscription as its counters are read: a dispatcher, or the sum of its worker processes."""

    @property
    def counters(self) -> SubscriptionCounters: ...

    @property
    def backlog(self) -> int: ...


@dataclass
class AgentState:
    """What a running agent exposes to tests and to its reported state."""

    pipeline: Pipeline | None = None
    outbox: Outbox | None = None
    uplink: Uplink | None = None
    intake: LocalBroker | None = None
    reconciler: Reconciler | None = None
    alarms: set[str] = field(default_factory=set)
    last_losses: dict[str, dict[str, int]] = field(default_factory=dict)
    run: int | None = None
    """This run's number (edge_agent.runs); with ``reports`` it orders the reported states for the hub."""
    reports: int = 0

    @property
    def dispatchers(self) -> dict[str, Dispatcher]:
        return self.pipeline.dispatchers if self.pipeline is not None else {}

    @property
    def subscriptions(self) -> dict[str, Counted]:
        """Every running subscription's counters, those on several workers summed over them."""
        if self.pipeline is None:
            return {}
        return {**self.pipeline.dispatchers, **self.pipeline.groups}

    @property
    def runtimes(self) -> dict[str, HandlerRuntime]:
        return self.pipeline.runtimes if self.pipeline is not None else {}

    @property
    def update_errors(self) -> dict[str, tuple[str, str]]:
        return self.pipeline.update_errors if self.pipeline is not None else {}

    def counters(self) -> dict[str, Any]:
        return {name: d.counters.as_dict() for name, d in self.subscriptions.items()}

    def alarm(self, name: str, on: bool) -> None:
        if on:
            self.alarms.add(name)
        else:
            self.alarms.discard(name)

    def _handler_report(self, name: str, runtime: HandlerRuntime, publish: bool) -> HandlerReport:
        described = runtime.describe()
        failed_image, update_error = self.update_errors.get(name, (None, None))
        # Events of subscriptions on several workers are handled by the workers' own replicas of the handler.
        groups = self.pipeline.groups.values() if self.pipeline is not None else ()
        by_workers = [g.handler_stats for g in groups if g.handler.name == name]
        return HandlerReport(
            name=name,
            image=described.image,
            healthy=runtime.healthy,
            state=runtime.state,
            restarts=described.restarts,
            container=described.container,
            processed=runtime.stats.processed + sum(p for p, _ in by_workers),
            errors=runtime.stats.errors + sum(e for _, e in by_workers),
            lag_ms=runtime.stats.end_interval_lag_ms() if publish else runtime.stats.lag_ms(),
            update_failed_image=failed_image,
            update_error=update_error,
            replicas=described.replicas,
            arrival_rate=described.arrival_rate,
            capacity_per_replica=described.capacity_per_replica,
            oom_kills=described.oom_kills,
        )

    async def reported(self, device_id: str, *, publish: bool = True) -> Reported:
        """The reported state: applied version, handlers, counters, the outbox's loss ledger and alarms.

        ``publish``: the state the agent publishes, which ends each handler's lag interval (its ``lag_ms`` is the
        worst since the last one published). A local read (``publish=False``: the status endpoint) changes
        nothing: its ``lag_ms`` spans the interval the last report ended and the running one."""
        handlers = [self._handler_report(name, runtime, publish) for name, runtime in self.runtimes.items()]
        subs = {
            name: SubscriptionReport(**d.counters.as_dict(), backlog=d.backlog)
            for name, d in self.subscriptions.items()
        }
        losses: dict[str, dict[str, int]] = {}
        pending = 0
        if self.outbox is not None:
            try:
                losses = self.last_losses = await self.outbox.losses()
                self.alarms.discard("outbox-unreadable")
            except OutboxError:
                self.alarms.add("outbox-unreadable")
            pending = self.outbox.pending
        rec = self.reconciler
        if publish:  # a local read shows the number of the last report published
            self.reports += 1
        return Reported(
            device=device_id,
            agent_version=__version__,
            applied_version=rec.applied_version if rec else None,
            handlers=handlers,
            subscriptions=subs,
            losses=losses,
            outbox_pending=pending,
            alarms=sorted(self.alarms),
            last_refusal=rec.last_refusal if rec else None,
            desired_refusals=dict(rec.checks.refusals) if rec else {},
            desired_expires_at=rec.checks.running.expires_at if rec and rec.checks.running else None,
            desired_refused=rec.refused if rec else None,
            run=self.run,
            seq=max(self.reports, 1) if self.run is not None else None,
            ts=wall_clock(),
        )
