"""Handler and subscription specs: what a device runs and how it routes and aggregates.

The same models are read from an agent's standalone config and compiled by the hub into desired state.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from edge_protocol.base import WireModel
from edge_protocol.durations import Duration
from edge_protocol.topics import validate_filter

NAME_PATTERN = r"^[a-z0-9]([a-z0-9_.-]{0,62}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]

STATISTICS = ("count", "sum", "min", "max", "mean", "stddev", "first", "last")
_QUANTILE = re.compile(r"^p(\d{1,2}(\.\d+)?)$")
_MEMORY = re.compile(r"^\d+[kmg]?$")
MAX_WORKERS = 16


class ResourceLimits(WireModel):
    """Per-container limits; Docker's spelling for memory (``64m``)."""

    memory: str = "128m"
    cpus: float = Field(default=1.0, gt=0, le=64)
    pids: int = Field(default=64, ge=8, le=4096)
    tmpfs_size: str = "16m"

    @field_validator("memory", "tmpfs_size")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not _MEMORY.match(value.lower()):
            raise ValueError(f"expected a size like '64m' or '1g', got {value!r}")
        return value.lower()


class HandlerSpec(WireModel):
    """A containerized handler: which image runs, with which limits and how many replicas."""

    name: Name
    image: str = Field(min_length=1, description="image reference: repo@sha256:..., a local image id, or a tag")
    limits: ResourceLimits = ResourceLimits()
    replicas: int = Field(default=1, ge=1, le=16, description="replicas always running")
    max_replicas: int | None = Field(
        default=None, ge=1, le=16, description="up to this many by measured load, P = ceil(E / (m x utilisation))"
    )
    target_utilization: float = Field(default=0.7, gt=0, le=1, description="the share of m a replica may use")
    network: Literal["none", "host"] = "none"
    env: dict[str, str] = Field(default_factory=dict)
    command: list[str] | None = None
    event_timeout: Duration = Field(default=5.0, gt=0, description="a reply later than this dead-letters the event")
    batch_size: int = Field(default=500, ge=1, le=10_000)
    batch_linger: Duration = Field(
        default=0.0,
        ge=0,
        le=1.0,
        description="how long a batch short of batch_size may wait for more events, from its first event's "
        "arrival: a paced stream then costs one handler round trip, one write of acknowledgements and one commit "
        "per few events instead of per event, for later results; 0: a batch takes what the next loop turn reads",
    )
    io: Literal["auto", "socket", "stdio"] = Field(
        default="auto",
        description="where the handler speaks the protocol: the unix socket named by $EDGEFLEET_HANDLER_SOCKET "
        "(the SDK's choice; no engine in between), stdin/stdout through the engine's attach stream, or auto: "
        "whichever the handler uses, told apart at start",
    )


class WindowSpec(WireModel):
    """Tumbling (size), hopping (size and hop) or session (gap) window."""

    kind: Literal["tumbling", "hopping", "session"] = "tumbling"
    size: Duration = Field(default=10.0, gt=0)
    hop: Duration | None = None
    gap: Duration | None = None

    @model_validator(mode="after")
    def _shape(self) -> WindowSpec:
        if self.kind == "hopping":
            if self.hop is None or not 0 < self.hop <= self.size:
                raise ValueError("a hopping window needs 0 < hop <= size")
        elif self.hop is not None:
            raise ValueError(f"hop applies to hopping windows only, not {self.kind}")
        if self.kind == "session":
            if self.gap is None or self.gap <= 0:
                raise ValueError("a session window needs gap > 0")
        elif self.gap is not None:
            raise ValueError(f"gap applies to session windows only, not {self.kind}")
        return self


def parse_statistic(name: str) -> str:
    """Normalise one statistic name; ``p99``/``p99.9`` are quantiles."""
    name = name.strip().lower()
    if name in STATISTICS:
        return name
    match = _QUANTILE.match(name)
    if match and 0 < float(match.group(1)) < 100:
        return name
    raise ValueError(f"unknown statistic {name!r}: use {', '.join(STATISTICS)} or a quantile like p95")


def quantile_of(statistic: str) -> float | None:
    """0.95 for ``p95``; None for a statistic that is not a quantile."""
    match = _QUANTILE.match(statistic)
    return float(match.group(1)) / 100 if match else None


class SubscriptionSpec(WireModel):
    """Topic filter on the device broker -> handler -> window -> statistics of the handler's result values."""

    name: Name
    topic: str
    handler: Name
    window: WindowSpec = WindowSpec()
    stats: list[str] = Field(default_factory=lambda: ["count", "sum", "min", "max", "mean"])
    fields: list[str] | None = Field(default=None, description="result fields to aggregate; None: every numeric one")
    group_by: list[str] = Field(
        default_factory=list, description="'topic[N]' (topic level N, 0-based) or a result/payload field name"
    )
    event_time_field: str | None = Field(default=None, description="payload field with epoch seconds; else arrival")
    lateness: Duration = Field(default=0.0, ge=0)
    key: str | None = Field(
        default=None, description="'topic[N]' or a payload field: events of one key stay in order across replicas"
    )
    overflow: Literal["block", "drop-oldest"] = "block"
    queue_size: int = Field(default=2_000, ge=1, le=1_000_000)
    qos: Literal[0, 1] = 1
    # workers = 1 is left out of the JSON: the revision of every existing subscription stays what it was, and an
    # older agent (which rejects unknown keys) still reads a document that does not use workers.
    workers: int = Field(
        default=1,
        exclude_if=lambda n: n == 1,
        ge=1,
        le=MAX_WORKERS,
        description="intake worker processes sharing the filter (an MQTT shared subscription); each commits its "
        "own part of every window and the hub merges the parts. Not with a key or session windows: the events "
        "of a key or a session would be split between workers and lose their order",
    )

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return validate_filter(value)

    @field_validator("stats")
    @classmethod
    def _stats(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one statistic is needed")
        return [parse_statistic(v) for v in value]

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, value: list[str]) -> list[str]:
        for key in value:
            if key.startswith("topic[") and not re.fullmatch(r"topic\[\d+\]", key):
                raise ValueError(f"group key {key!r}: use topic[N] with N a topic level index")
        return value

    @model_validator(mode="after")
    def _workers(self) -> SubscriptionSpec:
        if self.workers > 1:
            if self.key is not None:
                raise ValueError("workers > 1 splits a key's events between processes: a subscription with a key "
                                 "(events in order per key) runs on one worker")
            if self.window.kind == "session":
                raise ValueError("workers > 1 splits a group's events between processes: session windows, which "
                                 "need every event of a group in one place, run on one worker")
        return self

    @property
    def revision(self) -> str:
        """Short content hash: a changed subscription starts new window ids."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
