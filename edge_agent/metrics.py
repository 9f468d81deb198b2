"""Prometheus metrics of a running agent (served by :mod:`edge_agent.status` on a loopback address only).

A custom collector reads the agent's counters when scraped, so the hot path pays nothing for metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edge_agent.state import AgentState

log = logging.getLogger(__name__)


class AgentCollector(Collector):
    def __init__(self, state: AgentState) -> None:
        self._state = state

    def collect(self) -> Iterator[Any]:
        s = self._state
        by_sub = [
            ("events_received", "events taken from the local broker", "received"),
            ("events_processed", "events whose result went into a window", "processed"),
            ("overflow_drops", "events dropped by the drop-oldest overflow policy", "dropped_overflow"),
            ("redeliveries_skipped", "broker redeliveries already committed", "redelivered"),
            ("windows_closed", "windows committed to the outbox", "windows_closed"),
        ]
        dispatchers = dict(s.subscriptions)
        for name, help_text, attr in by_sub:
            fam = CounterMetricFamily(f"edgefleet_agent_{name}", help_text, labels=["subscription"])
            for sub, d in dispatchers.items():
                fam.add_metric([sub], getattr(d.counters, attr))
            yield fam
        dead = CounterMetricFamily(
            "edgefleet_agent_dead_letters", "events dead-lettered", labels=["subscription", "reason"]
        )
        backlog = GaugeMetricFamily(
            "edgefleet_agent_backlog", "events queued per subscription", labels=["subscription"]
        )
        for sub, d in dispatchers.items():
            for reason, n in dict(d.counters.dead_lettered).items():
                dead.add_metric([sub, reason], n)
            backlog.add_metric([sub], d.backlog)
        yield dead
        yield backlog
        up = GaugeMetricFamily("edgefleet_agent_handler_up", "1 when the handler answers", labels=["handler"])
        restarts = CounterMetricFamily("edgefleet_agent_handler_restarts", "container restarts", labels=["handler"])
        ooms = CounterMetricFamily(
            "edgefleet_agent_handler_oom_kills", "containers killed for memory (OOM killer)", labels=["handler"]
        )
        lag = GaugeMetricFamily(
            "edgefleet_agent_handler_lag_seconds",
            "worst arrival-to-outcome time of the last report interval and the running one",
            labels=["handler"],
        )
        for name, runtime in dict(s.runtimes).items():
            up.add_metric([name], 1.0 if runtime.healthy else 0.0)
            restarts.add_metric([name], runtime.restarts)
            ooms.add_metric([name], runtime.oom_kills)
            lag_ms = runtime.stats.lag_ms()  # a read: the next report's lag is untouched
            if lag_ms is not None:
                lag.add_metric([name], lag_ms / 1000)
        yield up
        yield restarts
        yield ooms
        yield lag
        pending = GaugeMetricFamily("edgefleet_agent_outbox_pending", "records waiting for the hub's ack")
        pending.add_metric([], s.outbox.pending if s.outbox is not None else 0)
        yield pending
        losses = CounterMetricFamily(
            "edgefleet_agent_outbox_losses",
            "records the outbox gave up (as last reported)",
            labels=["subscription", "reason"],
        )
        for sub, reasons in dict(s.last_losses).items():
            for reason, n in reasons.items():
                losses.add_metric([sub, reason], n)
        yield losses
        if s.uplink is not None:
            for name, attr in (
                ("uplink_records_sent", "sent"),
                ("uplink_records_acked", "acked"),
                ("uplink_resends", "resends"),
            ):
                fam = CounterMetricFamily(f"edgefleet_agent_{name}", name.replace("_", " "))
                fam.add_metric([], getattr(s.uplink, attr))
                yield fam
        alarm = GaugeMetricFamily("edgefleet_agent_alarm", "1 while an alarm is raised", labels=["alarm"])
        for name in sorted(s.alarms):
            alarm.add_metric([name], 1.0)
        yield alarm

