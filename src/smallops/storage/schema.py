"""The tables, in SQLAlchemy Core. Alembic migrations under migrations/ create and evolve them.

`runs` holds one row per workflow call with its whole audit trail (the attempts' raw requests and
responses included), so one call is one insert; `prompt_versions` keeps each template text once,
and `prompt_parts` what every run of a prompt version sends again (prompt_parts.py).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    TypeDecorator,
)
from sqlalchemy import Text as _Text
from sqlalchemy.dialects.postgresql import JSONB

from smallops.redact import Redactor
from smallops.storage.storable import Flag, clean, text

metadata = MetaData()


class Json(TypeDecorator[Any]):
    """JSON (JSONB on Postgres) that stores any value: NUL, lone surrogates and non-finite
    numbers are made storable the way storable.py documents, and secrets are redacted, on every
    write that goes through SQLAlchemy (decisions, eval results, events); the log writer does
    the same on its own."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else JSON())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        flags: set[Flag] = set()
        return None if value is None else Redactor.from_environment().value(clean(value, flags))


class Text(TypeDecorator[str]):
    """Text without NUL or lone surrogates (Postgres refuses both), e.g. a reviewer's reason,
    and without secrets; `redact=False` for text that must stay as written (a URL, a template)."""

    impl = _Text
    cache_ok = True

    def __init__(self, *, redact: bool = True) -> None:
        super().__init__()
        self.redact = redact

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        flags: set[Flag] = set()
        cleaned = text(value, flags)
        return Redactor.from_environment()(cleaned) if self.redact else cleaned


class Timestamp(TypeDecorator[datetime]):
    """A moment, bound as UTC: SQLite keeps a time as its wall-clock text, so a time given in
    another zone (`--since 2026-12-01T03:30+02:00`) is turned to UTC before it is compared with
    the stored ones, which are all UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(timezone.utc)
        return value


prompt_versions = Table(
    "prompt_versions",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("workflow", String(100), nullable=False),
    Column("template", Text(redact=False), nullable=False),
    Column("output_schema", Json()),
    Column("model", String(200), nullable=False),
    Column("params", Json(), nullable=False),
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
    Column("error_message", Text()),
    Column("review_policy", String(50), nullable=False),
    Column("review_route", String(30)),
    Column("origin", String(20)),
    Column("guards", Json()),
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
    Column("inputs", Json(), nullable=False),
    Column("messages", Json()),
    Column("output", Json()),
    Column("attempts", Json(), nullable=False),
    Column("content", String(20)),  # full, redacted, metadata, or pruned (NULL: full)
    Column("flags", Json()),  # what was changed to make the record storable (storable.FLAGS)
    Column("batch_id", String(60)),  # `smallops run --input`: "<file key>/<invocation id>"
    Column("batch_item", String(40)),  # "<line>:<input hash>", what `run --resume` skips
    # 1: messages and attempts may hold references to prompt_parts (prompt_parts.py, format 1);
    # NULL: everything inline, as every run written before prompt parts existed.
    Column("compacted", Integer),
    # "<trace id>-<span id>" of the application's span the call ran under (trace_context.py)
    Column("trace_parent", String(49)),
    # who made the call, when it was not the application itself: a gateway key's name
    Column("caller", String(100)),
    Index("ix_runs_workflow_started", "workflow", "started_at"),
    Index("ix_runs_started", "started_at"),
    Index("ix_runs_status_id", "status", "id"),  # `logs --status`: newest first
    Index("ix_runs_error_type_id", "error_type", "id"),
    Index("ix_runs_batch", "batch_id"),
)

# What every run of a prompt version repeats (a rendered system prompt, the request's model,
# schema and parameters), kept once: `id` is a hash of the workflow, prompt version and the
# part's JSON text. `last_used` is when a write last referenced it, for prune.py.
prompt_parts = Table(
    "prompt_parts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("workflow", String(100), nullable=False),
    Column("prompt_version", String(16), nullable=False),
    Column("part", Text(redact=False), nullable=False),  # JSON text, as the writer made it
    Column("created_at", Timestamp, nullable=False),
    Column("last_used", Timestamp, nullable=False),
    Index("ix_prompt_parts_workflow_used", "workflow", "last_used"),
)

#: Column order of the fast insert path (writer) and of the spool. New columns go at the end, so
#: rows spooled by an older version replay with NULL in them.
RUN_COLUMNS = tuple(column.name for column in runs.columns)
PROMPT_COLUMNS = tuple(column.name for column in prompt_versions.columns)
#: Column order of the prompt part rows that travel with the runs (the writer adds last_used).
PART_COLUMNS = tuple(column.name for column in prompt_parts.columns if column.name != "last_used")

# The review queue: one item per run a human must see (the review policy, or the review fallback).
review_items = Table(
    "review_items",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("workflow", String(100), nullable=False),
    Column("prompt_version", String(16), nullable=False),
    Column("model_served", String(200)),
    Column("reason", String(20), nullable=False),
    Column("route", String(30), nullable=False),
    Column("error_type", String(50)),
    Column("output", Json()),
    Column("classes", Json(), nullable=False),
    Column("state", String(20), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("claimed_by", String(200)),
    Column("claimed_until", Timestamp),
    Column("decided_by", String(200)),
    Column("decided_at", Timestamp),
    Column("final_output", Json()),
    Column("reject_reason", Text()),
    Index("ix_review_items_queue", "state", "workflow", "created_at"),
    # The pending queue of every workflow, oldest first, and `claim_next`: no sort.
    Index("ix_review_items_pending", "state", "created_at", "run_id"),
)

# Every reviewer action, append-only: who, when, the output before and after.
review_decisions = Table(
    "review_decisions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("run_id", String(36), nullable=False),
    Column("workflow", String(100), nullable=False),
    Column("action", String(20), nullable=False),
    Column("reviewer", String(200), nullable=False),
    Column("decided_at", Timestamp, nullable=False),
    Column("output_before", Json()),
    Column("output_after", Json()),
    Column("reason", Text()),
    Column("route", String(30)),
    Column("hook_error", Text()),
    Index("ix_review_decisions_run", "run_id"),
    Index("ix_review_decisions_workflow", "workflow", "decided_at"),
)

# Promotions to auto-action and demotions back to review, per workflow and output class.
graduation_events = Table(
    "graduation_events",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workflow", String(100), nullable=False),
    Column("class_key", String(200), nullable=False),
    Column("action", String(10), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("prompt_version", String(16), nullable=False),
    Column("model", String(200)),
    Column("reviews", Integer, nullable=False),
    Column("lower_bound", Float),
    Column("at", Timestamp, nullable=False),
    Index("ix_graduation_events_class", "workflow", "class_key", "at"),
)

# The webhook outbox: written with the decision, sent until a 2xx, never resent after one.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("run_id", String(36), nullable=False),
    Column("url", Text(redact=False), nullable=False),
    Column("payload", Text(), nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("claimed_until", Timestamp),
    Column("delivered_at", Timestamp),
    Column("last_error", Text()),
    Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
)

REVIEW_COLUMNS = tuple(column.name for column in review_items.columns)

# Eval runs: one per `smallops eval` of a workflow, its cases' results linked to their runs.
eval_runs = Table(
    "eval_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workflow", String(100), nullable=False),
    Column("prompt_version", String(16), nullable=False),
    Column("model", String(200), nullable=False),
    Column("dataset", Text(redact=False), nullable=False),
    Column("cases", Integer, nullable=False),
    Column("repeat", Integer, nullable=False),
    Column("passed", Integer, nullable=False),
    Column("cost_usd", Float),
    Column("verdict", String(20)),
    Column("git_commit", String(64)),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp, nullable=False),
    Column("summary", Json(), nullable=False),
    Index("ix_eval_runs_workflow", "workflow", "prompt_version"),
)

eval_results = Table(
    "eval_results",
    metadata,
    Column("eval_run_id", String(36), primary_key=True),
    Column("case_id", String(200), primary_key=True),
    Column("repeat", Integer, primary_key=True),
    Column("run_id", String(36)),
    Column("passed", Boolean, nullable=False),
    Column("cached", Boolean, nullable=False),
    Column("checks", Json(), nullable=False),
    Column("output", Json()),
    Column("error", Text()),
)

# Validated outputs only, keyed by model, prompt version, input and repeat: a rerun is free.
eval_cache = Table(
    "eval_cache",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("workflow", String(100), nullable=False),
    Column("prompt_version", String(16), nullable=False),
    Column("model", String(200), nullable=False),
    Column("repeat", Integer, nullable=False),
    Column("output", Json(), nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

# Guard events: circuit breaker transitions, budget warnings and exhaustion, for `status`.
guard_events = Table(
    "guard_events",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workflow", String(100), nullable=False),
    Column("guard", String(20), nullable=False),
    Column("key", String(300), nullable=False),
    Column("before", String(20)),
    Column("after", String(20), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("at", Timestamp, nullable=False),
    Index("ix_guard_events_workflow", "workflow", "at"),
)

# Spend per workflow and period ("day:2026-11-27", "month:2026-11"), reserved before each call
# with a conditional update, so processes racing for the last dollars cannot overshoot a cap.
budget_spend = Table(
    "budget_spend",
    metadata,
    Column("workflow", String(100), primary_key=True),
    Column("period", String(20), primary_key=True),
    Column("spent_usd", Float, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)


def _key(name: str, length: int) -> Column[str]:
    return Column(name, String(length), nullable=False, server_default="")


def _total(name: str, kind: Any) -> Column[Any]:
    return Column(name, kind, nullable=False, server_default="0")


# Per hour and key, what production and eval runs did: written with the runs (rollups.py),
# read by `smallops report` and the dashboards instead of the runs. '' stands for NULL in keys.
run_rollups = Table(
    "run_rollups",
    metadata,
    Column("hour", Timestamp, nullable=False),
    _key("workflow", 100),
    _key("origin", 20),
    _key("status", 30),
    _key("error_type", 50),
    _key("model_requested", 200),
    _key("model_served", 200),
    _key("prompt_version", 16),
    _total("calls", BigInteger()),
    _total("priced_calls", BigInteger()),
    _total("cost_usd", Float()),
    _total("input_tokens", BigInteger()),
    _total("output_tokens", BigInteger()),
    _total("cached_tokens", BigInteger()),
    _total("model_mismatches", BigInteger()),
    _total("latency_sum_ms", Float()),
    Column("latency_min_ms", Float),
    Column("latency_max_ms", Float),
    Column("latency_histogram", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    PrimaryKeyConstraint(
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
    Index("ix_run_rollups_workflow_hour", "workflow", "hour"),
)

# Per hour, workflow and prompt version, how often each label field of the pinned model's
# production outputs took each value (label_rollups.py): what the drift check reads.
label_rollups = Table(
    "label_rollups",
    metadata,
    Column("hour", Timestamp, nullable=False),
    Column("workflow", String(100), nullable=False),
    Column("prompt_version", String(16), nullable=False),
    Column("field", String(100), nullable=False),
    Column("value", String(200), nullable=False),
    _total("calls", BigInteger()),
    PrimaryKeyConstraint(
        "hour", "workflow", "prompt_version", "field", "value", name="pk_label_rollups"
    ),
    Index("ix_label_rollups_workflow_hour", "workflow", "hour"),
)

# Alerts (smallops.alerts): one row per alert instance. `open_key` is its dedup key while it is
# open and NULL once resolved: the unique index lets one open alert per key exist, however many
# processes check the rules at once.
alerts = Table(
    "alerts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("rule", String(30), nullable=False),
    Column("workflow", String(100), nullable=False),
    Column("period", String(200), nullable=False),
    Column("dedup_key", String(400), nullable=False),
    Column("open_key", String(400)),
    Column("state", String(20), nullable=False),
    Column("severity", String(10), nullable=False),
    Column("summary", Text(), nullable=False),
    Column("figures", Json(), nullable=False),
    Column("link", Text(redact=False)),
    Column("level", Integer, nullable=False),  # 0: its first channels; 1: escalated
    Column("repeats", Integer, nullable=False),  # reminders sent after the first firing
    Column("thread", Json(), nullable=False),  # channel name -> what it answered (Slack's ts)
    Column("fired_at", Timestamp, nullable=False),
    Column("last_notified_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("acknowledged_at", Timestamp),
    Column("acknowledged_by", String(200)),
    Column("resolved_at", Timestamp),
    Index("ux_alerts_open_key", "open_key", unique=True),
    Index("ix_alerts_workflow_fired", "workflow", "fired_at"),
)

# The alerts' outbox: one row per message to one channel, sent until the service takes it or
# refuses it for good, leased to one sender at a time.
alert_notifications = Table(
    "alert_notifications",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("alert_id", String(36), nullable=False),
    Column("channel", String(100), nullable=False),
    Column("event", String(20), nullable=False),
    Column("repeat", Integer, nullable=False),
    Column("escalated", Boolean, nullable=False),
    Column("payload", Json(), nullable=False),  # severity, summary, figures and time of the event
    Column("recipients", Json(), nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("claimed_until", Timestamp),
    Column("sent_at", Timestamp),
    Column("detail", Text()),  # what the service answered last
    Index("ix_alert_notifications_due", "state", "next_attempt_at"),
    Index("ix_alert_notifications_alert", "alert_id", "channel"),
)


# The gateway's virtual keys (smallops.gateway.keys): only a SHA-256 of each key is kept, so the
# table cannot give a key away; `prefix` is what `keys list` shows to tell them apart.
gateway_keys = Table(
    "gateway_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("prefix", String(24), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("routes", Json()),  # the route names it may use; NULL: every route
    Column("rpm", Integer),  # requests per minute, for this key alone
    Column("daily_usd", Float),  # its daily budget
    Column("created_at", Timestamp, nullable=False),
    Column("revoked_at", Timestamp),
    Index("ux_gateway_keys_hash", "key_hash", unique=True),
    Index("ix_gateway_keys_name", "name"),  # one active key per name: checked when made
)
