"""Run flags (what was changed to make a record storable) and batches (for `run --resume`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    json = sa.JSON().with_variant(JSONB(), "postgresql")
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("flags", json))
        batch.add_column(sa.Column("batch_id", sa.String(60)))
        batch.add_column(sa.Column("batch_item", sa.String(40)))
    op.create_index("ix_runs_batch", "runs", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_batch", "runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("batch_item")
        batch.drop_column("batch_id")
        batch.drop_column("flags")
