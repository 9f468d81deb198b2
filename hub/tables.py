"""ORM tables of the hub store. Times are epoch seconds (floats), as on the wire."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Double, Index, Integer, Text
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
