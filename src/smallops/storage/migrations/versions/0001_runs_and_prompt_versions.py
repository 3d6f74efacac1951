"""The log: runs (one per call, with its audit trail) and prompt_versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "prompt_versions",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("output_schema", Json),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("params", Json, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("prompt_version", sa.String(16), nullable=False),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("provider", sa.String(50), nullable=False),
        sa.Column("endpoint", sa.String(300)),
        sa.Column("model_requested", sa.String(200), nullable=False),
        sa.Column("model_served", sa.String(200)),
        sa.Column("model_mismatch", sa.Boolean, nullable=False),
        sa.Column("allow_unpinned", sa.Boolean, nullable=False),
        sa.Column("system_fingerprint", sa.String(100)),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("error_type", sa.String(50)),
        sa.Column("error_message", sa.Text),
        sa.Column("review_policy", sa.String(50), nullable=False),
        sa.Column("fallback", sa.String(20), nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float),
        sa.Column("cost_source", sa.String(20), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=False),
        sa.Column("inputs", Json, nullable=False),
        sa.Column("messages", Json),
        sa.Column("output", Json),
        sa.Column("attempts", Json, nullable=False),
    )
    op.create_index("ix_runs_workflow_started", "runs", ["workflow", "started_at"])
    op.create_index("ix_runs_started", "runs", ["started_at"])
    op.create_index("ix_runs_status", "runs", ["status"])


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("prompt_versions")
