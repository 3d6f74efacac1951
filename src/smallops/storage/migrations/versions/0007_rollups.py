"""Run rollups: per hour and key, what the runs did and cost, with a latency histogram.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

The table starts empty; `smallops db upgrade` (and `smallops db rebuild-rollups`) fills it from
the runs already logged. Key columns hold '' rather than NULL, so the primary key is a plain
unique key on both engines and `ON CONFLICT` finds the row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    json = sa.JSON().with_variant(JSONB(), "postgresql")

    def key(name: str, length: int) -> sa.Column[str]:
        return sa.Column(name, sa.String(length), nullable=False, server_default="")

    def total(name: str, kind: type[sa.types.TypeEngine[object]]) -> sa.Column[object]:
        return sa.Column(name, kind(), nullable=False, server_default="0")

    op.create_table(
        "run_rollups",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        key("workflow", 100),
        key("origin", 20),
        key("status", 30),
        key("error_type", 50),
        key("model_requested", 200),
        key("model_served", 200),
        key("prompt_version", 16),
        total("calls", sa.BigInteger),
        total("priced_calls", sa.BigInteger),
        total("cost_usd", sa.Float),
        total("input_tokens", sa.BigInteger),
        total("output_tokens", sa.BigInteger),
        total("cached_tokens", sa.BigInteger),
        total("model_mismatches", sa.BigInteger),
        total("latency_sum_ms", sa.Float),
        sa.Column("latency_min_ms", sa.Float),
        sa.Column("latency_max_ms", sa.Float),
        sa.Column("latency_histogram", json, nullable=False),
        sa.PrimaryKeyConstraint(
            "hour",
            "workflow",
            "origin",
            "status",
            "error_type",
            "model_requested",
            "model_served",
            "prompt_version",
            name="pk_run_rollups",
        ),
    )
    op.create_index("ix_run_rollups_workflow_hour", "run_rollups", ["workflow", "hour"])


def downgrade() -> None:
    op.drop_index("ix_run_rollups_workflow_hour", "run_rollups")
    op.drop_table("run_rollups")
