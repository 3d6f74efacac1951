"""Guards: runs.guards, guard_events (breaker transitions, budget warnings), budget_spend.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("guards", Json))
    op.create_table(
        "guard_events",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("guard", sa.String(20), nullable=False),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("before", sa.String(20)),
        sa.Column("after", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", Timestamp, nullable=False),
    )
    op.create_index("ix_guard_events_workflow", "guard_events", ["workflow", "at"])
    op.create_table(
        "budget_spend",
        sa.Column("workflow", sa.String(100), primary_key=True),
        sa.Column("period", sa.String(20), primary_key=True),
        sa.Column("spent_usd", sa.Float, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budget_spend")
    op.drop_table("guard_events")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("guards")
