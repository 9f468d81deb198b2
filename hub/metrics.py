"""Prometheus metrics of the hub, served by ``GET /metrics``.

They live in the default registry: a hub is one process, and tests read deltas, not absolute values.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from edge_protocol.messages import Reported

MESSAGES = Counter(
    "edgefleet_hub_messages_total",
    "MQTT messages received by ingest, by channel",
    ["channel"],
)
REJECTED = Counter(
    "edgefleet_hub_messages_rejected_total",
    "Messages ingest could not use (not JSON, invalid, wrong kind, device mismatch, ...), by reason",
    ["reason"],
)
RECORDS_STORED = Counter(
    "edgefleet_hub_records_durable_total",
    "Window results durable in the store after a batch and acked (redeliveries of stored windows included)",
)
RECORDS_REFUSED = Counter(
    "edgefleet_hub_records_refused_total",
    "Window results in a valid batch that the hub refused to store (not acked as stored), by reason: "
    "foreign_window_id, non_finite, conflict (its window id is stored with other content; named refused in an Ack)",
    ["reason"],
)
ACKS = Counter("edgefleet_hub_acks_published_total", "Acks published to agents")
FAILURES = Counter(
    "edgefleet_hub_failures_total",
    "Store writes, ack or desired-state publishes that failed (each is retried), by operation",
    ["operation"],
)
DESIRED_VERSIONS = Counter(
    "edgefleet_hub_desired_versions_total",
    "New desired-state versions compiled (one per device whose document changed)",
)
DESIRED_PUBLISHED = Counter(
    "edgefleet_hub_desired_published_total",
    "Signed desired-state messages published (retained) and acknowledged by the broker",
)
DESIRED_RENEWED = Counter(
    "edgefleet_hub_desired_renewed_total",
    "Desired-state documents re-signed with a later expiry (same version and content) by this replica",
)
ADMISSION_REFUSED = Counter(
    "edgefleet_hub_admission_refused_total",
    "Security events at the hub: messages or records refused because a device spoke for another one, by reason "
    "(device_mismatch: the message names another device than its topic; foreign_window_id: a record with "
    "another device's window id)",
    ["reason"],
)
DEVICE_DESIRED_REFUSALS = Gauge(
    "edgefleet_hub_device_desired_refusals",
    "Security events on devices: desired-state messages refused, by reason (bad-signature, expired, "
    "stale-version, ...), summed over the fleet's latest reported states (each agent counts since its start)",
    ["reason"],
)
INGEST_GROUP_RECORDS = Histogram(
    "edgefleet_hub_ingest_group_records",
    "Records and messages (a status or reported state counts one) committed per ingest transaction",
    buckets=(1, 10, 50, 200, 1_000, 2_000, 5_000),
)
INGEST_QUEUED = Gauge(
    "edgefleet_hub_ingest_queued_records",
    "Records checked by ingest and waiting for their transaction",
)
FLEET_WRITES = Counter(
    "edgefleet_hub_fleet_writes_total",
    "Rows of the devices and reported tables that ingest offered, by table and outcome: written (inserted or "
    "changed), unchanged (the row already held the same or newer data, as another replica had written it)",
    ["table", "outcome"],
)
HANDLER_FAILURES = Counter(
    "edgefleet_hub_handler_failures_total",
    "Handler failures devices reported (the increase of their per-handler counts), by reason: "
    "oom (a container killed for memory by the kernel's OOM killer, inside its limit)",
    ["reason"],
)

LEASE_HELD = Gauge(
    "edgefleet_hub_lease_held",
    "1 while this replica holds the lease of a singleton job and runs it (rollouts, desired-renewal), else 0",
    ["name"],
)
ROLLOUT_TICKS = Counter(
    "edgefleet_hub_rollout_ticks_total",
    "Passes of the rollout controller over the running rollouts made by this replica (only the lease holder ticks)",
)


class HandlerFailureCounts:
    """Turns the cumulative per-handler counts of reported states into ``HANDLER_FAILURES`` increments.

    A retained state the hub hears first (at subscribe, after a hub restart) is only a baseline: whoever heard
    it live counted it. A count lower than the last one is an agent restart: it is all new. An older state
    (by the agent's ``ts``) than the last one changes nothing.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def observe(self, reported: Reported, *, retained: bool) -> None:
        for handler in reported.handlers:
            key = (reported.device, handler.name)
            last = self._last.get(key)
            if last is not None and reported.ts <= last[0]:
                continue
            self._last[key] = (reported.ts, handler.oom_kills)
            if last is None and retained:
                continue
            before = last[1] if last is not None else 0
            new = handler.oom_kills - before if handler.oom_kills >= before else handler.oom_kills
            if new:
                HANDLER_FAILURES.labels("oom").inc(new)


HANDLER_FAILURE_COUNTS = HandlerFailureCounts()
