"""The review queue: items, decisions, graduation events, the webhook outbox; runs.review_route.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("review_route", sa.String(30)))
    op.create_table(
        "review_items",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("prompt_version", sa.String(16), nullable=False),
        sa.Column("model_served", sa.String(200)),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("route", sa.String(30), nullable=False),
        sa.Column("error_type", sa.String(50)),
        sa.Column("output", Json),
        sa.Column("classes", Json, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("claimed_by", sa.String(200)),
        sa.Column("claimed_until", Timestamp),
        sa.Column("decided_by", sa.String(200)),
        sa.Column("decided_at", Timestamp),
        sa.Column("final_output", Json),
        sa.Column("reject_reason", sa.Text),
    )
    op.create_index("ix_review_items_queue", "review_items", ["state", "workflow", "created_at"])
    op.create_table(
        "review_decisions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("decided_at", Timestamp, nullable=False),
        sa.Column("output_before", Json),
        sa.Column("output_after", Json),
        sa.Column("reason", sa.Text),
        sa.Column("route", sa.String(30)),
        sa.Column("hook_error", sa.Text),
    )
    op.create_index("ix_review_decisions_run", "review_decisions", ["run_id"])
    op.create_index("ix_review_decisions_workflow", "review_decisions", ["workflow", "decided_at"])
    op.create_table(
        "graduation_events",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("class_key", sa.String(200), nullable=False),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("prompt_version", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200)),
        sa.Column("reviews", sa.Integer, nullable=False),
        sa.Column("lower_bound", sa.Float),
        sa.Column("at", Timestamp, nullable=False),
    )
    op.create_index(
        "ix_graduation_events_class", "graduation_events", ["workflow", "class_key", "at"]
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("next_attempt_at", Timestamp, nullable=False),
        sa.Column("claimed_until", Timestamp),
        sa.Column("delivered_at", Timestamp),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("graduation_events")
    op.drop_table("review_decisions")
    op.drop_table("review_items")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("review_route")
