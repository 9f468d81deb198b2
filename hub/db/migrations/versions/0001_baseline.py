"""Baseline: the schema of the previous release (6b1c255), frozen in :mod:`hub.db.migrations.baseline`.

A database that release built has no ``alembic_version``; :mod:`hub.db.migrations` stamps it at this revision
(or a later one, by the tables and columns it finds) instead of running this.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from hub.db.migrations import baseline

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    baseline.metadata.create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    baseline.metadata.drop_all(op.get_bind(), checkfirst=False)
