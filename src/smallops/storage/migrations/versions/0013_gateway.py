"""The gateway: `gateway_keys` holds its virtual keys (a SHA-256 of each, never the key), and
`runs.caller` the name of the key a gateway request came with (NULL for every other run, and for
every run written before this revision; a nullable column with no default rewrites nothing).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Moment = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("caller", sa.String(100)))
    op.create_table(
        "gateway_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(24), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("routes", Json),
        sa.Column("rpm", sa.Integer),
        sa.Column("daily_usd", sa.Float),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("revoked_at", Moment),
    )
    op.create_index("ux_gateway_keys_hash", "gateway_keys", ["key_hash"], unique=True)
    op.create_index("ix_gateway_keys_name", "gateway_keys", ["name"])


def downgrade() -> None:
    op.drop_index("ix_gateway_keys_name", table_name="gateway_keys")
    op.drop_index("ux_gateway_keys_hash", table_name="gateway_keys")
    op.drop_table("gateway_keys")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("caller")
