"""Window conflicts: each aggregate's content hash and the refused windows (620975d).

Aggregates stored before keep a NULL hash; ingest computes it from the stored row when it needs it
(:mod:`hub.ingest.conflicts`).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("aggregates", sa.Column("content_hash", sa.Text(), nullable=True))
    op.create_table(
        "refused_windows",
        sa.Column("window_id", sa.Text(), nullable=False),
        sa.Column("offered_hash", sa.Text(), nullable=False),
        sa.Column("device", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("stored_hash", sa.Text(), nullable=True),
        sa.Column("first_at", sa.Double(), nullable=False),
        sa.Column("last_at", sa.Double(), nullable=False),
        sa.Column("times", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("window_id", "offered_hash"),
    )
    op.create_index("ix_refused_windows_device", "refused_windows", ["device"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_refused_windows_device", table_name="refused_windows")
    op.drop_table("refused_windows")
    with op.batch_alter_table("aggregates") as batch:
        batch.drop_column("content_hash")
