"""Alerts and their outbox (smallops.alerts).

`alerts` keeps each alert instance and its state; `open_key` (unique) holds its dedup key while
it is open, so one open alert per key exists however many processes check the rules.
`alert_notifications` is the outbox its messages go through.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Moment = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("rule", sa.String(30), nullable=False),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("period", sa.String(200), nullable=False),
        sa.Column("dedup_key", sa.String(400), nullable=False),
        sa.Column("open_key", sa.String(400)),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("severity", sa.String(10), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("figures", Json, nullable=False),
        sa.Column("link", sa.Text),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("repeats", sa.Integer, nullable=False),
        sa.Column("thread", Json, nullable=False),
        sa.Column("fired_at", Moment, nullable=False),
        sa.Column("last_notified_at", Moment, nullable=False),
        sa.Column("updated_at", Moment, nullable=False),
        sa.Column("acknowledged_at", Moment),
        sa.Column("acknowledged_by", sa.String(200)),
        sa.Column("resolved_at", Moment),
    )
    op.create_index("ux_alerts_open_key", "alerts", ["open_key"], unique=True)
    op.create_index("ix_alerts_workflow_fired", "alerts", ["workflow", "fired_at"])
    op.create_table(
        "alert_notifications",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("alert_id", sa.String(36), nullable=False),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("repeat", sa.Integer, nullable=False),
        sa.Column("escalated", sa.Boolean, nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("recipients", Json, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("next_attempt_at", Moment, nullable=False),
        sa.Column("claimed_until", Moment),
        sa.Column("sent_at", Moment),
        sa.Column("detail", sa.Text),
    )
    op.create_index(
        "ix_alert_notifications_due", "alert_notifications", ["state", "next_attempt_at"]
    )
    op.create_index("ix_alert_notifications_alert", "alert_notifications", ["alert_id", "channel"])


def downgrade() -> None:
    op.drop_index("ix_alert_notifications_alert", "alert_notifications")
    op.drop_index("ix_alert_notifications_due", "alert_notifications")
    op.drop_table("alert_notifications")
    op.drop_index("ix_alerts_workflow_fired", "alerts")
    op.drop_index("ux_alerts_open_key", "alerts")
    op.drop_table("alerts")
