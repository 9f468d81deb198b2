"""ORM tables of the hub store. Times are epoch seconds (floats), as on the wire."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Double, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on PostgreSQL (indexable, compact); JSON text elsewhere.
_Json = JSON().with_variant(postgresql.JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of every hub table."""


class DeviceRow(Base):
    """A device the hub has heard from (a status message or aggregates)."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    first_seen: Mapped[float] = mapped_column(Double)
    last_seen: Mapped[float] = mapped_column(Double)
    online: Mapped[bool] = mapped_column(Boolean)
    agent_version: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, str]] = mapped_column(_Json, default=dict, doc="label key -> value, set by operators")


class AggregateRow(Base):
    """One window result; ``window_id`` (device, subscription@revision, group, start, part) is its identity."""

    __tablename__ = "aggregates"

    window_id: Mapped[str] = mapped_column(Text, primary_key=True)
    device: Mapped[str] = mapped_column(Text)
    subscription: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(Text)
    group: Mapped[str] = mapped_column("group", Text)
    window_start: Mapped[float] = mapped_column(Double)
    window_end: Mapped[float] = mapped_column(Double)
    part: Mapped[int] = mapped_column(Integer)
    events: Mapped[int] = mapped_column(Integer)
    fields: Mapped[dict[str, Any]] = mapped_column(_Json, doc="field name -> FieldState as a JSON object")
    stats: Mapped[list[str]] = mapped_column(_Json)
    stored_at: Mapped[float] = mapped_column(Double)
    content_hash: Mapped[str | None] = mapped_column(
        Text, nullable=True, doc="SHA-256 (hex) of the result's canonical JSON; None in rows stored before it existed"
    )

    __table_args__ = (
        # The API's filters: by device or subscription over a time range, and by time alone.
        Index("ix_aggregates_device_start", "device", "window_start"),
        Index("ix_aggregates_subscription_start", "subscription", "window_start"),
        Index("ix_aggregates_start", "window_start"),
    )


class RefusedWindowRow(Base):
    """A window result the hub refused (``conflict``: its window id is stored with other content), once per
    window id and offered content however often it is resent."""

    __tablename__ = "refused_windows"

    window_id: Mapped[str] = mapped_column(Text, primary_key=True)
    offered_hash: Mapped[str] = mapped_column(Text, primary_key=True, doc="content_hash of the refused result")
    device: Mapped[str] = mapped_column(Text, index=True)
    reason: Mapped[str] = mapped_column(Text)
    stored_hash: Mapped[str | None] = mapped_column(Text, nullable=True, doc="content_hash of the stored window")
    first_at: Mapped[float] = mapped_column(Double)
    last_at: Mapped[float] = mapped_column(Double)
    times: Mapped[int] = mapped_column(Integer, doc="how often it was offered and refused")


class ReportedRow(Base):
    """A device's latest reported state (the agent's ``Reported`` message as JSON): the one with the highest
    (``run``, ``seq``), by ``reported_at`` only between reports of agents that send no run (hub.fleet.registry)."""

    __tablename__ = "reported"

    device: Mapped[str] = mapped_column(Text, primary_key=True)
    reported_at: Mapped[float] = mapped_column(Double, doc="the agent's ts")
    run: Mapped[int | None] = mapped_column(BigInteger, nullable=True, doc="the agent's run; None from older agents")
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True, doc="the report's number within the run")
    received_at: Mapped[float] = mapped_column(Double)
    applied_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[dict[str, Any]] = mapped_column(_Json)


class HandlerRow(Base):
    """A handler managed at the hub: its ``HandlerSpec`` as JSON."""

    __tablename__ = "handlers"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(_Json)
    updated_at: Mapped[float] = mapped_column(Double)


class SubscriptionRow(Base):
    """A subscription managed at the hub: the devices it targets and its ``SubscriptionSpec`` as JSON."""

    __tablename__ = "subscriptions"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    # The database itself keeps a handler in use from being deleted, whatever replica races whom.
    handler: Mapped[str] = mapped_column(Text, ForeignKey("handlers.name", ondelete="RESTRICT"), index=True)
    target: Mapped[list[str]] = mapped_column(_Json, doc="label selector terms k=v, sorted; empty: every device")
    spec: Mapped[dict[str, Any]] = mapped_column(_Json)
    updated_at: Mapped[float] = mapped_column(Double)


class DesiredRow(Base):
    """One version of one device's desired state; (device, version) is unique, so two replicas cannot both
    issue the same version."""

    __tablename__ = "desired"

    device: Mapped[str] = mapped_column(Text, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(Text)
    document: Mapped[str] = mapped_column(Text, doc="the DesiredDocument's exact JSON text, as signed")
    envelope: Mapped[str] = mapped_column(Text, doc="the SignedDesired JSON published on the desired topic")
    created_at: Mapped[float] = mapped_column(Double)
    published_at: Mapped[float | None] = mapped_column(Double, nullable=True, doc="None until the broker acked it")


class ReleaseRow(Base):
    """One release of a handler: a version name and the image it runs, by digest (or a local image id)."""

    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    handler: Mapped[str] = mapped_column(Text, ForeignKey("handlers.name", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(Text)
    image: Mapped[str] = mapped_column(Text, doc="repo@sha256:..., a local image id, or a local tag as given")
    source: Mapped[str] = mapped_column(Text, doc="what the operator named: repo:tag, 'local', ...")
    created_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (UniqueConstraint("handler", "version"),)


class StableReleaseRow(Base):
    """The release a handler's devices run unless assigned another; its image is also the handler spec's."""

    __tablename__ = "stable_releases"

    handler: Mapped[str] = mapped_column(Text, ForeignKey("handlers.name", ondelete="CASCADE"), primary_key=True)
    release_id: Mapped[int] = mapped_column(Integer, ForeignKey("releases.id", ondelete="CASCADE"))
    updated_at: Mapped[float] = mapped_column(Double)


class AssignmentRow(Base):
    """A device pinned to a release of a handler other than (or regardless of) the stable one."""

    __tablename__ = "release_assignments"

    device: Mapped[str] = mapped_column(Text, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    handler: Mapped[str] = mapped_column(Text, ForeignKey("handlers.name", ondelete="CASCADE"), primary_key=True)
    release_id: Mapped[int] = mapped_column(Integer, ForeignKey("releases.id", ondelete="CASCADE"))
    assigned_at: Mapped[float] = mapped_column(Double)


class RolloutRow(Base):
    """A staged rollout of a release; ``row_version`` is the compare-and-set token of every transition."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    handler: Mapped[str] = mapped_column(Text, ForeignKey("handlers.name", ondelete="CASCADE"), index=True)
    release_id: Mapped[int] = mapped_column(Integer, ForeignKey("releases.id", ondelete="CASCADE"))
    previous_release_id: Mapped[int] = mapped_column(Integer, ForeignKey("releases.id", ondelete="CASCADE"))
    target: Mapped[list[str]] = mapped_column(_Json)
    params: Mapped[dict[str, Any]] = mapped_column(_Json, doc="canary, batch, soak, limits, health_timeout")
    steps: Mapped[list[list[str]]] = mapped_column(_Json, doc="device ids per step: the canary first, then batches")
    state: Mapped[str] = mapped_column(Text, index=True)
    step: Mapped[int] = mapped_column(Integer, doc="index of the current step")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    row_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class RolloutDeviceRow(Base):
    """One device's progress in a rollout (step -1: a device outside the plan, held on its release)."""

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(Integer, ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    device: Mapped[str] = mapped_column(Text, primary_key=True)
    step: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text)
    previous_release_id: Mapped[int | None] = mapped_column(Integer, nullable=True, doc="None: followed stable")
    desired_version: Mapped[int | None] = mapped_column(Integer, nullable=True, doc="compiled after the last change")
    change_seq: Mapped[int] = mapped_column(Integer, default=0, doc="bumped by every assignment change")
    compile_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    assigned_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    healthy_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    soak_started_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    soak_processed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    soak_errors: Mapped[int | None] = mapped_column(Integer, nullable=True)
    soak_reports: Mapped[int] = mapped_column(Integer, default=0)
    soak_seen_at: Mapped[float | None] = mapped_column(Double, nullable=True, doc="received_at of the last report")
    max_lag_ms: Mapped[float | None] = mapped_column(Double, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[float] = mapped_column(Double)


class CredentialRow(Base):
    """A credential issued to a device by ``hub device provision``: a certificate (serial, expiry) or a broker
    password (whose hash only the broker's dynamic-security plugin keeps). ``revoked_at`` is set by revoke."""

    __tablename__ = "device_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(Text, index=True)
    kind: Mapped[str] = mapped_column(Text, doc="certificate or password")
    serial: Mapped[str | None] = mapped_column(Text, unique=True, nullable=True, doc="certificate serial, hex")
    not_after: Mapped[float | None] = mapped_column(Double, nullable=True, doc="certificate expiry")
    issued_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class ApiTokenRow(Base):
    """An API token: only the SHA-256 of the token is stored (``hub token create`` prints it once)."""

    __tablename__ = "api_tokens"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    digest: Mapped[str] = mapped_column(Text, unique=True, doc="SHA-256 of the token, hex")
    hint: Mapped[str] = mapped_column(Text, doc="the token's first characters, to tell tokens apart")
    created_at: Mapped[float] = mapped_column(Double)


class ApiLockRow(Base):
    """Written when the hub first has an API token (stored or configured) and never removed: from then on the
    API needs a token even after the last one is revoked (:mod:`hub.security.tokens`). One row, id 1."""

    __tablename__ = "api_lock"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reason: Mapped[str] = mapped_column(Text, doc="what locked it: the first token's name, or the [api] token")
    locked_at: Mapped[float] = mapped_column(Double)


class LeaseRow(Base):
    """The lease of a singleton job (the rollout controller, re-signing): one replica holds it until
    ``expires_at``, by the database's clock (:mod:`hub.leases`). ``epoch`` goes up at every change of holder."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    holder: Mapped[str] = mapped_column(Text, doc="the replica holding it (host:pid:random); '' when released")
    epoch: Mapped[int] = mapped_column(BigInteger, doc="the fencing token: one more at every acquisition")
    expires_at: Mapped[float] = mapped_column(Double, doc="epoch seconds by the database's clock")
    acquired_at: Mapped[float] = mapped_column(Double)
    renewed_at: Mapped[float] = mapped_column(Double)
