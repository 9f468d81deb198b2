"""JSON shapes of the hub API, shared by the server (:mod:`hub.api.app`) and the client (:mod:`hub.cli.client`)."""

from __future__ import annotations

import time
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from edge_protocol.aggregate import FieldState
from edge_protocol.durations import parse_duration
from edge_protocol.messages import HandlerReport, SubscriptionReport
from edge_protocol.specs import parse_statistic


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
    stats: dict[str, float | None] = Field(
        default_factory=dict, description="the statistics shown (the row's stats); a quantile is None without a sketch"
    )
    state: FieldState



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
    stats: list[str] = Field(description="statistics shown: the subscription's own unless the query chose")
    fields: dict[str, FieldSummary]
    stored_at: float
    devices: int = Field(default=1, description="distinct devices merged into this row (roll-ups)")
    parts: int = Field(default=1, description="stored rows merged into this row: a window's parts from several "
                       "intake workers, and in roll-ups every window merged")



class DeviceOut(_Out):
    """A device the hub has heard from, with a summary of what it reported. Times are epoch seconds."""

    id: str
    first_seen: float
    last_seen: float
    online: bool
    agent_version: str
    labels: dict[str, str] = Field(default_factory=dict)
    applied_version: int | None = Field(default=None, description="the desired-state version the device runs")
    desired_version: int | None = Field(default=None, description="the newest version the hub compiled for it")
    handlers: list[HandlerReport] = Field(default_factory=list, description="as last reported")
    losses_total: int = Field(default=0, description="records its outbox gave up, all subscriptions and reasons")
    reported_at: float | None = Field(default=None, description="the device's time of its last reported state")
    alarms: list[str] = Field(
        default_factory=list, description="as last reported (desired-expired: it runs a desired state past expiry)"
    )



class DeviceDetailOut(DeviceOut):
    """One device in detail: its reported counters, loss ledger, alarms and last refusal."""

    subscriptions: dict[str, SubscriptionReport] = Field(default_factory=dict)
    losses: dict[str, dict[str, int]] = Field(default_factory=dict, description="subscription -> reason -> records")
    outbox_pending: int = 0
    last_refusal: str | None = Field(default=None, description="why the device last refused a desired state")
    desired_refusals: dict[str, int] = Field(
        default_factory=dict, description="reason -> desired-state messages the device refused since its agent started"
    )
    desired_expires_at: float | None = Field(default=None, description="when the desired state it runs expires")
    received_at: float | None = Field(default=None, description="when the hub received the reported state")
    refused: dict[str, int] = Field(
        default_factory=dict,
        description="reason -> window results the hub refused to store (conflict: the window id is stored with "
        "other content), each window id and content once",
    )



class LabelsUpdate(BaseModel):
    """Body of ``PUT /v1/devices/{id}/labels``: labels to set, then keys to remove."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    set_: dict[str, str] = Field(default_factory=dict, alias="set", description="key -> value to set")
    remove: list[str] = Field(default_factory=list, description="keys to remove (absent keys are ignored)")


def parse_statistics(text: str | list[str] | None) -> list[str] | None:
    """``["count", "p99"]`` from ``"count,p99"`` (or several such), None for none; ValueError names a bad one."""
    if text is None:
        return None
    parts = [text] if isinstance(text, str) else text
    names = [name.strip() for part in parts for name in part.split(",") if name.strip()]
    if not names:
        return None
    chosen: list[str] = []
    for name in names:
        stat = parse_statistic(name)
        if stat not in chosen:
            chosen.append(stat)
    return chosen


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
