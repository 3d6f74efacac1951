"""Reading the log: recent runs, one run's whole audit trail, and per-workflow reports."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, func, or_, select

from smallops.errors import InputError, NotFoundError
from smallops.storage.schema import prompt_versions, runs

SUMMARY = (
    runs.c.id,
    runs.c.workflow,
    runs.c.status,
    runs.c.error_type,
    runs.c.model_served,
    runs.c.model_requested,
    runs.c.input_tokens,
    runs.c.output_tokens,
    runs.c.cost_usd,
    runs.c.latency_ms,
    runs.c.started_at,
    runs.c.prompt_version,
)


def list_runs(
    engine: Engine,
    *,
    workflow: str | None = None,
    since: datetime | None = None,
    status: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The most recent runs first; `status` matches a status or an error type.

    `email_triage` also finds `email-triage`: names are matched with - and _ alike.
    """
    query = select(*SUMMARY).order_by(runs.c.id.desc()).limit(limit)
    if workflow:
        spellings = {workflow, workflow.replace("_", "-"), workflow.replace("-", "_")}
        query = query.where(runs.c.workflow.in_(spellings))
    if since:
        query = query.where(runs.c.started_at >= since)
    if status:
        query = query.where((runs.c.status == status) | (runs.c.error_type == status))
    with engine.connect() as connection:
        return [plain_row(row._mapping) for row in connection.execute(query)]


def get_run(engine: Engine, run_id: str) -> dict[str, Any]:
    """One run with its prompt version's template.

    `run_id` may be a unique start or end of an id (8+ characters): the start is the time, the
    end the random part that `smallops logs` shows.
    """
    run_id = run_id.strip().lower()
    if len(run_id) < 8:
        raise InputError(f"run id {run_id!r} is too short", hint="give at least 8 characters")
    with engine.connect() as connection:
        rows = connection.execute(
            select(runs)
            .where(
                runs.c.id.startswith(run_id, autoescape=True)
                | runs.c.id.endswith(run_id, autoescape=True)
            )
            .limit(2)
        ).all()
        if not rows:
            raise NotFoundError(
                f"no run {run_id!r} in the log", hint="`smallops logs` lists recent run ids"
            )
        if len(rows) > 1:
            raise InputError(f"run id {run_id!r} matches several runs", hint="give more characters")
        run = plain_row(rows[0]._mapping)
        prompt = connection.execute(
            select(prompt_versions).where(prompt_versions.c.id == run["prompt_version"])
        ).first()
    run["prompt"] = plain_row(prompt._mapping) if prompt else None
    return run


#: Production traffic: the calls applications made (eval runs are reported by `smallops eval`).
PRODUCTION = or_(runs.c.origin.is_(None), runs.c.origin != "eval")
#: Production calls to the pinned model; the secondary model's calls (origin "fallback") are
#: fallback traffic, which is not drift.
PRIMARY = or_(runs.c.origin.is_(None), runs.c.origin == "app")


def report(engine: Engine, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """Per workflow, production calls: statuses, errors, tokens, cost, latency, models served
    (the pinned model's route apart from the secondary model's fallback calls)."""
    columns = (
        runs.c.workflow,
        runs.c.origin,
        runs.c.status,
        runs.c.error_type,
        runs.c.model_served,
        runs.c.model_mismatch,
        runs.c.input_tokens,
        runs.c.output_tokens,
        runs.c.cached_tokens,
        runs.c.cost_usd,
        runs.c.latency_ms,
    )
    query = select(*columns).where(PRODUCTION)
    if since:
        query = query.where(runs.c.started_at >= since)
    groups: dict[str, list[Any]] = defaultdict(list)
    with engine.connect() as connection:
        for row in connection.execute(query):
            groups[row.workflow].append(row)
    return [_summarise(name, rows) for name, rows in sorted(groups.items())]


def _summarise(workflow: str, rows: list[Any]) -> dict[str, Any]:
    latencies = sorted(row.latency_ms for row in rows)
    priced = [row.cost_usd for row in rows if row.cost_usd is not None]
    primary = [row for row in rows if row.origin != "fallback"]
    fallback = [row for row in rows if row.origin == "fallback"]
    return {
        "workflow": workflow,
        "calls": len(rows),
        "statuses": dict(Counter(row.status for row in rows).most_common()),
        "errors": dict(Counter(row.error_type for row in rows if row.error_type).most_common()),
        "input_tokens": sum(row.input_tokens for row in rows),
        "output_tokens": sum(row.output_tokens for row in rows),
        "cached_tokens": sum(row.cached_tokens for row in rows),
        "cost_usd": round(sum(priced), 6) if priced else None,
        "unpriced_calls": len(rows) - len(priced),
        "latency_p50_ms": _percentile(latencies, 50),
        "latency_p95_ms": _percentile(latencies, 95),
        "models_served": _served(primary),
        "model_mismatches": sum(1 for row in primary if row.model_mismatch),
        "fallback": {"calls": len(fallback), "models_served": _served(fallback)},
    }


def _served(rows: list[Any]) -> dict[str, int]:
    return dict(Counter(row.model_served for row in rows if row.model_served).most_common())


def _percentile(ordered: list[float], pct: int) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return round(ordered[0], 2)
    return round(statistics.quantiles(ordered, n=100, method="inclusive")[pct - 1], 2)


def plain_row(mapping: Any) -> dict[str, Any]:
    """A row as a dict, with timestamps as aware UTC datetimes on every database."""
    out = dict(mapping)
    for key, value in out.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            out[key] = value.replace(tzinfo=timezone.utc)
    return out


def latest_batch(engine: Engine, file_key: str) -> str | None:
    """The newest batch id of a file (ids are `<file key>/<time-ordered id>`), if any."""
    query = select(func.max(runs.c.batch_id)).where(
        runs.c.batch_id.startswith(f"{file_key}/", autoescape=True)
    )
    with engine.connect() as connection:
        found: str | None = connection.execute(query).scalar()
    return found


def batch_items_done(engine: Engine, batch_id: str) -> set[str]:
    """The input marks of a batch that have a recorded run (a call cancelled mid-flight by an
    interruption does not count: it never finished)."""
    query = select(runs.c.batch_item).where(
        runs.c.batch_id == batch_id,
        or_(runs.c.error_type.is_(None), runs.c.error_type != "cancelled"),
    )
    with engine.connect() as connection:
        return {row.batch_item for row in connection.execute(query) if row.batch_item}
