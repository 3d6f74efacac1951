"""Label rollups: per hour, workflow and prompt version, the count of each label value.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

The table starts empty; the migration environment fills it (with the run rollups) from the runs
already logged, in the same transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "label_rollups",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("prompt_version", sa.String(16), nullable=False),
        sa.Column("field", sa.String(100), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint(
            "hour", "workflow", "prompt_version", "field", "value", name="pk_label_rollups"
        ),
    )
    op.create_index("ix_label_rollups_workflow_hour", "label_rollups", ["workflow", "hour"])


def downgrade() -> None:
    op.drop_index("ix_label_rollups_workflow_hour", "label_rollups")
    op.drop_table("label_rollups")
