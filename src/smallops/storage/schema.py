"""The tables, in SQLAlchemy Core. Alembic migrations under migrations/ create and evolve them.

`runs` holds one row per workflow call with its whole audit trail (the attempts' raw requests and
responses included), so one call is one insert; `prompt_versions` keeps each template text once.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

Json = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)

prompt_versions = Table(
    "prompt_versions",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("workflow", String(100), nullable=False),
    Column("template", Text, nullable=False),
    Column("output_schema", Json),
    Column("model", String(200), nullable=False),
    Column("params", Json, nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workflow", String(100), nullable=False),
    Column("prompt_version", String(16), nullable=False),
    Column("git_commit", String(64)),
    Column("provider", String(50), nullable=False),
    Column("endpoint", String(300)),
    Column("model_requested", String(200), nullable=False),
    Column("model_served", String(200)),
    Column("model_mismatch", Boolean, nullable=False),
    Column("allow_unpinned", Boolean, nullable=False),
    Column("system_fingerprint", String(100)),
    Column("status", String(30), nullable=False),
    Column("error_type", String(50)),
    Column("error_message", Text),
    Column("review_policy", String(50), nullable=False),
    Column("fallback", String(20), nullable=False),
    Column("attempt_count", Integer, nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("reasoning_tokens", Integer, nullable=False),
    Column("cost_usd", Float),
    Column("cost_source", String(20), nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp, nullable=False),
    Column("inputs", Json, nullable=False),
    Column("messages", Json),
    Column("output", Json),
    Column("attempts", Json, nullable=False),
    Index("ix_runs_workflow_started", "workflow", "started_at"),
    Index("ix_runs_started", "started_at"),
    Index("ix_runs_status", "status"),
)

#: Column order of the fast insert path (writer) and of the spool.
RUN_COLUMNS = tuple(column.name for column in runs.columns)
PROMPT_COLUMNS = tuple(column.name for column in prompt_versions.columns)
JSON_COLUMNS = frozenset({"inputs", "messages", "output", "attempts", "output_schema", "params"})
