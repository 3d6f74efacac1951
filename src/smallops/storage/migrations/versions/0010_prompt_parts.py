"""Prompt parts: what every run of a prompt version repeats, stored once (prompt_parts.py).

`prompt_parts` holds a rendered system prompt or a request's model, schema and parameters once
per workflow and prompt version; `runs.compacted` says a run refers to them (NULL: the run
holds everything inline, as every run written before this revision does, and is read as it is).
Adding a column with no default leaves existing rows untouched on both engines (no rewrite of
a large `runs` table).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompt_parts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("prompt_version", sa.String(16), nullable=False),
        sa.Column("part", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_prompt_parts_workflow_used", "prompt_parts", ["workflow", "last_used"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("compacted", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("compacted")
    op.drop_index("ix_prompt_parts_workflow_used", "prompt_parts")
    op.drop_table("prompt_parts")
