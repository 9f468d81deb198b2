"""ORM tables of the hub store. Times are epoch seconds (floats), as on the wire."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Double, ForeignKey, Index, Integer, Text
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

    __table_args__ = (
        # The API's filters: by device or subscription over a time range, and by time alone.
        Index("ix_aggregates_device_start", "device", "window_start"),
        Index("ix_aggregates_subscription_start", "subscription", "window_start"),
        Index("ix_aggregates_start", "window_start"),
    )


class ReportedRow(Base):
    """A device's latest reported state (the agent's ``Reported`` message as JSON); newest ``reported_at`` wins."""

    __tablename__ = "reported"

    device: Mapped[str] = mapped_column(Text, primary_key=True)
    reported_at: Mapped[float] = mapped_column(Double, doc="the agent's ts")
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
