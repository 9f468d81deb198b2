"""Reported states ordered by the agent's run and report number (376f309).

States stored before keep NULL, which the next report with a run replaces (:mod:`hub.fleet.registry`).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("reported", sa.Column("run", sa.BigInteger(), nullable=True))
    op.add_column("reported", sa.Column("seq", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reported") as batch:
        batch.drop_column("seq")
        batch.drop_column("run")
