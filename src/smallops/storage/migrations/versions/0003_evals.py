"""Evals: eval_runs, eval_results, the eval cache; runs.origin (app or eval).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("origin", sa.String(20)))
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("prompt_version", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("cases", sa.Integer, nullable=False),
        sa.Column("repeat", sa.Integer, nullable=False),
        sa.Column("passed", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float),
        sa.Column("verdict", sa.String(20)),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=False),
        sa.Column("summary", Json, nullable=False),
    )
    op.create_index("ix_eval_runs_workflow", "eval_runs", ["workflow", "prompt_version"])
    op.create_table(
        "eval_results",
        sa.Column("eval_run_id", sa.String(36), primary_key=True),
        sa.Column("case_id", sa.String(200), primary_key=True),
        sa.Column("repeat", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String(36)),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("cached", sa.Boolean, nullable=False),
        sa.Column("checks", Json, nullable=False),
        sa.Column("output", Json),
        sa.Column("error", sa.Text),
    )
    op.create_table(
        "eval_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("prompt_version", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("repeat", sa.Integer, nullable=False),
        sa.Column("output", Json, nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("eval_cache")
    op.drop_table("eval_results")
    op.drop_table("eval_runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("origin")
