"""JSON shapes of the hub API, shared by the server (:mod:`hub.api`) and the client (:mod:`hub.client`)."""

from __future__ import annotations

import time
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from edge_protocol.aggregate import FieldState
from edge_protocol.durations import parse_duration
from hub.store import DeviceInfo, StoredAggregate


class _Out(BaseModel):
    # extra="ignore": a newer hub may add keys without breaking an older CLI.
    model_config = ConfigDict(frozen=True, extra="ignore")


class FieldSummary(_Out):
    """The usual statistics of one field in one window, and the raw mergeable state they come from."""

    count: int
    sum: float
    min: float
    max: float
    mean: float
    stddev: float = Field(description="population standard deviation")
    state: FieldState

    @classmethod
    def of(cls, state: FieldState) -> FieldSummary:
        return cls(
            count=state.count,
            sum=state.sum,
            min=state.min,
            max=state.max,
            mean=state.mean,
            stddev=state.stddev,
            state=state,
        )


class AggregateOut(_Out):
    """One stored window result. Times are epoch seconds."""

    window_id: str
    device: str
    subscription: str
    revision: str
    group: str
    window_start: float
    window_end: float
    part: int
    events: int
    stats: list[str] = Field(description="statistics the subscription asked for")
    fields: dict[str, FieldSummary]
    stored_at: float

    @classmethod
    def of(cls, agg: StoredAggregate) -> AggregateOut:
        return cls(
            window_id=agg.window_id,
            device=agg.device,
            subscription=agg.subscription,
            revision=agg.revision,
            group=agg.group,
            window_start=agg.window_start,
            window_end=agg.window_end,
            part=agg.part,
            events=agg.events,
            stats=agg.stats,
            fields={name: FieldSummary.of(state) for name, state in agg.fields.items()},
            stored_at=agg.stored_at,
        )


class DeviceOut(_Out):
    """A device the hub has heard from. Times are epoch seconds."""

    id: str
    first_seen: float
    last_seen: float
    online: bool
    agent_version: str

    @classmethod
    def of(cls, dev: DeviceInfo) -> DeviceOut:
        return cls(
            id=dev.id,
            first_seen=dev.first_seen,
            last_seen=dev.last_seen,
            online=dev.online,
            agent_version=dev.agent_version,
        )


def parse_time(text: str, *, now: float | None = None) -> float:
    """Epoch seconds from ``1764000000`` (epoch), ``10m`` / ``1h30m`` (that long ago) or ISO 8601 with a zone."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if "T" in text or "-" in text[1:]:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not a time: {text!r}") from exc
        if moment.tzinfo is None:
            raise ValueError(f"{text!r} has no time zone: add Z or an offset such as +01:00")
        return moment.timestamp()
    try:
        ago = parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"not a time: {text!r} (use an epoch, a duration like 10m, or ISO 8601)") from exc
    return (time.time() if now is None else now) - ago
