"""Indexes for the review desk under load and for `smallops logs --status`.

- The unfiltered pending queue (oldest first) and `claim_next` filter on the state and order by
  age: `ix_review_items_pending` (state, created_at, run_id) serves both without a sort; the
  queue index that leads with the workflow serves them only for one workflow.
- `logs --status X` matches a status or an error type, newest first: (status, id) and
  (error_type, id) let both arms use an index instead of scanning every run. (status, id) takes
  the place of the index on the status alone.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_review_items_pending", "review_items", ["state", "created_at", "run_id"])
    op.create_index("ix_runs_status_id", "runs", ["status", "id"])
    op.create_index("ix_runs_error_type_id", "runs", ["error_type", "id"])
    op.drop_index("ix_runs_status", "runs")


def downgrade() -> None:
    op.create_index("ix_runs_status", "runs", ["status"])
    op.drop_index("ix_runs_error_type_id", "runs")
    op.drop_index("ix_runs_status_id", "runs")
    op.drop_index("ix_review_items_pending", "review_items")
