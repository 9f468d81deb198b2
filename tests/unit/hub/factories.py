"""Builders of wire messages for the hub's unit tests."""

from __future__ import annotations

from edge_protocol.aggregate import FieldAccumulator, FieldState, WindowResult, window_id
from edge_protocol.messages import (
    AggregateBatch,
    HandlerReport,
    Reported,
    SequencedResult,
    Status,
    SubscriptionReport,
)


def field_state(*values: float, start: float = 0.0, sketch: bool = False) -> FieldState:
    acc = FieldAccumulator(with_sketch=sketch)
    for i, value in enumerate(values):
        acc.add(value, start + i)
    return acc.freeze()


def record(
    seq: int,
    *,
    device: str = "dev-a",
    subscription: str = "temp",
    start: float = 1000.0,
    size: float = 10.0,
    group: str = "",
    values: tuple[float, ...] = (1.0, 2.0, 3.0),
    sketch: bool = False,
    stats: tuple[str, ...] = ("count", "mean"),
) -> SequencedResult:
    result = WindowResult(
        id=window_id(device, subscription, "rev1", group, start),
        subscription=subscription,
        revision="rev1",
        group=group,
        window_start=start,
        window_end=start + size,
        events=len(values),
        fields={"temp": field_state(*values, start=start, sketch=sketch)},
        stats=list(stats),
    )
    return SequencedResult(seq=seq, result=result)


def batch(device: str, *records: SequencedResult) -> AggregateBatch:
    return AggregateBatch(device=device, sent_at=2000.0, records=list(records))


def status(device: str, *, online: bool = True, version: str = "0.1.0", ts: float = 1500.0) -> Status:
    return Status(device=device, online=online, agent_version=version, ts=ts)


def reported(
    device: str,
    *,
    applied: int | None = None,
    ts: float = 1600.0,
    healthy: bool = True,
    losses: dict[str, dict[str, int]] | None = None,
    refusal: str | None = None,
) -> Reported:
    return Reported(
        device=device,
        agent_version="0.2.0",
        applied_version=applied,
        handlers=[HandlerReport(name="temp-c", image="edgefleet/temp-c:dev", healthy=healthy, restarts=2)],
        subscriptions={"temp": SubscriptionReport(received=10, processed=9, dead_lettered={"late": 1}, backlog=3)},
        losses=losses or {},
        outbox_pending=4,
        alarms=["outbox-write-failed"] if not healthy else [],
        last_refusal=refusal,
        ts=ts,
    )
