"""The caller's trace: `runs.trace_parent` keeps "<trace id>-<span id>" of the application's span
that was active when the call started (smallops.trace_context), so the run's OpenTelemetry spans
join the application's trace, live and in a backfill alike. NULL when there was none, as for
every run written before this revision. A nullable column with no default leaves existing rows
untouched on both engines (no rewrite of a large `runs` table).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("trace_parent", sa.String(49)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("trace_parent")
