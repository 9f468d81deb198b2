"""Messages on the cloud broker between agents and the hub (see docs/architecture.md for the topic table)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, field_validator, model_validator

from edge_protocol import PROTOCOL_VERSION
from edge_protocol.aggregate import WindowResult
from edge_protocol.base import WireModel

MAX_SEQ = 2**63 - 1
"""Sequences are SQLite integers: anything larger is not a sequence we could have sent."""


class SequencedResult(WireModel):
    """A window result with the agent's outbox sequence number."""

    seq: int = Field(ge=1, le=MAX_SEQ)
    result: WindowResult


class AggregateBatch(WireModel):
    """agent -> hub: window results taken from the outbox, oldest first."""

    kind: Literal["aggregates"] = "aggregates"
    v: int = PROTOCOL_VERSION
    device: str
    sent_at: float
    records: list[SequencedResult] = Field(min_length=1)


class Refusal(WireModel):
    """One outbox record the hub will never store, and why (``conflict``: its window id is stored with other
    content). The agent gives the record up into its loss ledger under ``reason`` instead of resending it."""

    seq: int = Field(ge=1, le=MAX_SEQ)
    reason: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")


class Ack(WireModel):
    """hub -> agent: the outbox sequences the hub has durably stored (inclusive ranges), and those it refused.

    ``refused`` is newer than the rest: the hub sends refusals in an Ack of their own (``ranges`` empty) and
    leaves the key out of every other Ack, so an older agent (which rejects unknown keys) still takes the
    stored ranges and only misses the refusal (it resends the record until its time-to-live: ``expired``).
    """

    kind: Literal["ack"] = "ack"
    v: int = PROTOCOL_VERSION
    device: str
    ranges: list[tuple[int, int]] = Field(default_factory=list, max_length=100_000)
    refused: list[Refusal] = Field(default_factory=list, max_length=100_000)

    @field_validator("ranges")
    @classmethod
    def _ranges(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for lo, hi in value:
            if not 1 <= lo <= hi <= MAX_SEQ:
                raise ValueError(f"range ({lo}, {hi}) is not 1 <= lo <= hi <= 2**63-1")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Ack:
        if not self.ranges and not self.refused:
            raise ValueError("an ack names at least one stored range or one refused sequence")
        return self

    def covers(self, seq: int) -> bool:
        return any(lo <= seq <= hi for lo, hi in self.ranges)

    def wire(self) -> bytes:
        """The JSON to publish: without ``refused`` when there is none, as older agents expect."""
        return self.model_dump_json(exclude={"refused"} if not self.refused else None).encode()


class Status(WireModel):
    """agent -> hub, retained, also the MQTT will (``online=False``)."""

    kind: Literal["status"] = "status"
    v: int = PROTOCOL_VERSION
    device: str
    online: bool
    agent_version: str = ""
    ts: float


class HandlerReport(WireModel):
    """One handler as the device runs it, with what a rollout gates on.

    ``image`` is the reference from the desired state the handler runs (a registry digest ``repo@sha256:...``,
    a local image id, or in standalone mode a tag). ``processed`` and ``errors`` are cumulative since the
    runtime started (errors: events its handler failed -- error replies, exits, hangs, invalid replies), so the
    hub gates on their deltas over a soak window; ``lag_ms`` is the largest arrival-to-result time of the last
    report interval. ``update_error`` says why the last switch to another image was refused (the old one kept
    running): the image and the reason.
    """

    name: str
    image: str
    healthy: bool
    state: Literal["running", "restarting", "failed", "stopped"] = "running"
    restarts: int = Field(default=0, ge=0)
    container: str | None = None
    processed: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    lag_ms: float | None = Field(default=None, ge=0)
    update_error: str | None = None
    update_failed_image: str | None = None
    replicas: int = Field(default=1, ge=0, description="P: replicas running")
    arrival_rate: float | None = Field(default=None, ge=0, description="E: events/s offered to the handler")
    capacity_per_replica: float | None = Field(default=None, ge=0, description="m: events/s one replica handles")
    oom_kills: int = Field(
        default=0, ge=0, description="containers killed for memory (the kernel's OOM killer, inside the limit)"
    )


class SubscriptionReport(WireModel):
    """One subscription's counters since the agent started."""

    received: int = Field(default=0, ge=0)
    processed: int = Field(default=0, ge=0)
    dead_lettered: dict[str, int] = Field(default_factory=dict)
    dropped_overflow: int = Field(default=0, ge=0)
    redelivered: int = Field(default=0, ge=0)
    windows_closed: int = Field(default=0, ge=0)
    published: int = Field(default=0, ge=0)
    backlog: int = Field(default=0, ge=0)


class DesiredRefusal(WireModel):
    """A desired-state version the device tried and does not run: the step its handler failed and why.

    Desired state is applied all-or-nothing: ``pull``, ``start`` and ``health`` fail before anything switched;
    ``probation`` is a crash-loop after the switch, which put the whole previous document back. Either way
    the device runs its last good document (``applied_version``) and does not try this version again.
    """

    version: int = Field(ge=1)
    step: Literal["pull", "start", "health", "probation"]
    handler: str
    image: str
    reason: str


class Reported(WireModel):
    """agent -> hub, retained: what the device runs and how it is doing, including its loss ledger."""

    kind: Literal["reported"] = "reported"
    v: int = PROTOCOL_VERSION
    device: str
    agent_version: str = ""
    applied_version: int | None = None
    handlers: list[HandlerReport] = Field(default_factory=list)
    subscriptions: dict[str, SubscriptionReport] = Field(default_factory=dict)
    losses: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="subscription -> reason -> records the outbox gave up (expired, full)"
    )
    outbox_pending: int = Field(default=0, ge=0)
    alarms: list[str] = Field(default_factory=list)
    last_refusal: str | None = None
    desired_refusals: dict[str, int] = Field(
        default_factory=dict, description="reason -> desired-state messages refused since the agent started"
    )
    desired_expires_at: float | None = Field(default=None, description="when the desired state it runs expires")
    desired_refused: DesiredRefusal | None = Field(
        default=None, description="the last desired-state version refused at a step (none since the agent started)"
    )
    run: int | None = Field(
        default=None, ge=1, le=MAX_SEQ, description="the agent's run: one more at every start (kept on disk)"
    )
    seq: int | None = Field(default=None, ge=1, le=MAX_SEQ, description="this report's number within the run")
    ts: float = Field(description="the device's wall clock: shown, never used to order reports (run and seq are)")

    def wire(self) -> bytes:
        """The JSON to publish: the newer keys (``desired_*``, a handler's ``oom_kills``) only when set, so an
        older hub still reads it."""
        unset: dict[str, Any] = {"desired_refusals": True} if not self.desired_refusals else {}
        if self.desired_expires_at is None:
            unset["desired_expires_at"] = True
        if self.desired_refused is None:
            unset["desired_refused"] = True
        for key in ("run", "seq"):
            if getattr(self, key) is None:
                unset[key] = True
        no_oom = {i: {"oom_kills"} for i, h in enumerate(self.handlers) if not h.oom_kills}
        if no_oom:
            unset["handlers"] = no_oom
        return self.model_dump_json(exclude=unset or None).encode()


CloudMessage = Annotated[AggregateBatch | Ack | Status | Reported, Field(discriminator="kind")]
CLOUD_MESSAGE: TypeAdapter[AggregateBatch | Ack | Status | Reported] = TypeAdapter(CloudMessage)


def ranges_of(seqs: list[int]) -> list[tuple[int, int]]:
    """Collapse sequence numbers into sorted inclusive ranges: [1,2,3,7] -> [(1,3),(7,7)]."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out
