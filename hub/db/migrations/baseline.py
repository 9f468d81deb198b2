"""The schema of the previous release (6b1c255), frozen: the tables its ``create_all`` made.

Migration 0001 creates them; a database that release built (no ``alembic_version``) gets whatever of them it
lacks, as that release's own start did, before :mod:`hub.db.migrations` stamps it. Never edit: a schema change
is a new revision in ``versions/``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

# JSONB on PostgreSQL, JSON text elsewhere, as that release's tables declared it.
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

AGGREGATES = sa.Table(
    "aggregates",
    metadata,
    sa.Column("window_id", sa.Text(), nullable=False),
    sa.Column("device", sa.Text(), nullable=False),
    sa.Column("subscription", sa.Text(), nullable=False),
    sa.Column("revision", sa.Text(), nullable=False),
    sa.Column("group", sa.Text(), nullable=False),
    sa.Column("window_start", sa.Double(), nullable=False),
    sa.Column("window_end", sa.Double(), nullable=False),
    sa.Column("part", sa.Integer(), nullable=False),
    sa.Column("events", sa.Integer(), nullable=False),
    sa.Column("fields", _JSON, nullable=False),
    sa.Column("stats", _JSON, nullable=False),
    sa.Column("stored_at", sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint("window_id"),
    sa.Index("ix_aggregates_device_start", "device", "window_start"),
    sa.Index("ix_aggregates_start", "window_start"),
    sa.Index("ix_aggregates_subscription_start", "subscription", "window_start"),
)

API_TOKENS = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("digest", sa.Text(), nullable=False),
    sa.Column("hint", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint("name"),
    sa.UniqueConstraint("digest"),
)

DESIRED = sa.Table(
    "desired",
    metadata,
    sa.Column("device", sa.Text(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("content_hash", sa.Text(), nullable=False),
    sa.Column("document", sa.Text(), nullable=False),
    sa.Column("envelope", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Column("published_at", sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint("device", "version"),
)

DEVICE_CREDENTIALS = sa.Table(
    "device_credentials",
    metadata,
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("device", sa.Text(), nullable=False),
    sa.Column("kind", sa.Text(), nullable=False),
    sa.Column("serial", sa.Text(), nullable=True),
    sa.Column("not_after", sa.Double(), nullable=True),
    sa.Column("issued_at", sa.Double(), nullable=False),
    sa.Column("revoked_at", sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("serial"),
    sa.Index("ix_device_credentials_device", "device"),
)

DEVICES = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.Text(), nullable=False),
    sa.Column("first_seen", sa.Double(), nullable=False),
    sa.Column("last_seen", sa.Double(), nullable=False),
    sa.Column("online", sa.Boolean(), nullable=False),
    sa.Column("agent_version", sa.Text(), nullable=False),
    sa.Column("labels", _JSON, nullable=False),
    sa.PrimaryKeyConstraint("id"),
)

HANDLERS = sa.Table(
    "handlers",
    metadata,
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("spec", _JSON, nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint("name"),
)

REPORTED = sa.Table(
    "reported",
    metadata,
    sa.Column("device", sa.Text(), nullable=False),
    sa.Column("reported_at", sa.Double(), nullable=False),
    sa.Column("received_at", sa.Double(), nullable=False),
    sa.Column("applied_version", sa.Integer(), nullable=True),
    sa.Column("state", _JSON, nullable=False),
    sa.PrimaryKeyConstraint("device"),
)

RELEASES = sa.Table(
    "releases",
    metadata,
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("handler", sa.Text(), nullable=False),
    sa.Column("version", sa.Text(), nullable=False),
    sa.Column("image", sa.Text(), nullable=False),
    sa.Column("source", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(["handler"], ["handlers.name"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("handler", "version"),
)

SUBSCRIPTIONS = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("handler", sa.Text(), nullable=False),
    sa.Column("target", _JSON, nullable=False),
    sa.Column("spec", _JSON, nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(["handler"], ["handlers.name"], ondelete="RESTRICT"),
    sa.PrimaryKeyConstraint("name"),
    sa.Index("ix_subscriptions_handler", "handler"),
)

RELEASE_ASSIGNMENTS = sa.Table(
    "release_assignments",
    metadata,
    sa.Column("device", sa.Text(), nullable=False),
    sa.Column("handler", sa.Text(), nullable=False),
    sa.Column("release_id", sa.Integer(), nullable=False),
    sa.Column("assigned_at", sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(["device"], ["devices.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["handler"], ["handlers.name"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("device", "handler"),
)

ROLLOUTS = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("handler", sa.Text(), nullable=False),
    sa.Column("release_id", sa.Integer(), nullable=False),
    sa.Column("previous_release_id", sa.Integer(), nullable=False),
    sa.Column("target", _JSON, nullable=False),
    sa.Column("params", _JSON, nullable=False),
    sa.Column("steps", _JSON, nullable=False),
    sa.Column("state", sa.Text(), nullable=False),
    sa.Column("step", sa.Integer(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("row_version", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    sa.Column("finished_at", sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(["handler"], ["handlers.name"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["previous_release_id"], ["releases.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_rollouts_handler", "handler"),
    sa.Index("ix_rollouts_state", "state"),
)

STABLE_RELEASES = sa.Table(
    "stable_releases",
    metadata,
    sa.Column("handler", sa.Text(), nullable=False),
    sa.Column("release_id", sa.Integer(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(["handler"], ["handlers.name"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("handler"),
)

ROLLOUT_DEVICES = sa.Table(
    "rollout_devices",
    metadata,
    sa.Column("rollout_id", sa.Integer(), nullable=False),
    sa.Column("device", sa.Text(), nullable=False),
    sa.Column("step", sa.Integer(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("previous_release_id", sa.Integer(), nullable=True),
    sa.Column("desired_version", sa.Integer(), nullable=True),
    sa.Column("change_seq", sa.Integer(), nullable=False),
    sa.Column("compile_pending", sa.Boolean(), nullable=False),
    sa.Column("assigned_at", sa.Double(), nullable=True),
    sa.Column("healthy_at", sa.Double(), nullable=True),
    sa.Column("soak_started_at", sa.Double(), nullable=True),
    sa.Column("soak_processed", sa.Integer(), nullable=True),
    sa.Column("soak_errors", sa.Integer(), nullable=True),
    sa.Column("soak_reports", sa.Integer(), nullable=False),
    sa.Column("soak_seen_at", sa.Double(), nullable=True),
    sa.Column("max_lag_ms", sa.Double(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("updated_at", sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("rollout_id", "device"),
)
