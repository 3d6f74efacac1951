"""Reading the log: recent runs, one run's whole audit trail, and per-workflow reports."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any, get_args

from sqlalchemy import ColumnElement, Engine, func, or_, select

from smallops.error_types import NOT_SENT
from smallops.errors import InputError, NotFoundError
from smallops.ids import SHORT_ID
from smallops.kinds import OriginFilter
from smallops.storage import rollup_reads
from smallops.storage.prompt_parts import expand_runs
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
    runs.c.origin,
)


def list_runs(
    engine: Engine,
    *,
    workflow: str | None = None,
    since: datetime | None = None,
    status: str | None = None,
    origin: Origin = "production",
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The most recent runs first; `status` matches a status or an error type; `origin` is one
    of ORIGINS.

    `email_triage` also finds `email-triage`: names are matched with - and _ alike.
    """
    query = select(*SUMMARY).order_by(runs.c.id.desc()).limit(limit)
    if origin != "all":
        query = query.where(_ORIGIN_FILTERS[origin])
    if workflow:
        spellings = {workflow, workflow.replace("_", "-"), workflow.replace("-", "_")}
        query = query.where(runs.c.workflow.in_(spellings))
    if since:
        query = query.where(runs.c.started_at >= since)
    if status:
        query = query.where((runs.c.status == status) | (runs.c.error_type == status))
    with engine.connect() as connection:
        return [plain_row(row._mapping) for row in connection.execute(query)]


#: The fewest characters of a run id that `show` and the review commands take.
MIN_ID_GIVEN = 8
#: The characters of a whole run id (a UUID written out).
FULL_ID = 36


def run_id_matches(column: Any, given: str) -> ColumnElement[bool]:
    """The ids `given` may stand for: a whole id, a start of one, or an end of one, such as the
    short id tables print (the random tail) and any start of that short id."""
    fragment = given.strip().lower()
    if len(fragment) < MIN_ID_GIVEN:
        raise InputError(
            f"run id {given.strip()!r} is too short",
            hint=f"give at least {MIN_ID_GIVEN} characters, e.g. the run id a table prints",
        )
    tail = func.substr(column, 37 - SHORT_ID)  # 1-based: the last SHORT_ID of 36 characters
    return or_(
        column.startswith(fragment, autoescape=True),
        column.endswith(fragment, autoescape=True),
        tail.startswith(fragment, autoescape=True),
    )


def get_run(engine: Engine, run_id: str) -> dict[str, Any]:
    """One run with its prompt version's template; `run_id` as `run_id_matches` takes it. A
    whole id is looked up by the primary key; a part of one is searched for among them all."""
    whole = run_id.strip().lower()
    if len(whole) == FULL_ID and whole.count("-") == 4:
        matches: ColumnElement[bool] = runs.c.id == whole
    else:
        matches = run_id_matches(runs.c.id, run_id)
    with engine.connect() as connection:
        rows = connection.execute(select(runs).where(matches).limit(2)).all()
        run_id = run_id.strip()
        if not rows:
            raise NotFoundError(
                f"no run {run_id!r} in the log", hint="`smallops logs` lists recent run ids"
            )
        if len(rows) > 1:
            raise InputError(f"run id {run_id!r} matches several runs", hint="give more characters")
        run = plain_row(rows[0]._mapping)
        expand_runs(connection, [run])
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

#: Where calls came from, as `smallops logs --origin` takes it (named in kinds.py, so that the
#: command line can name it without loading SQLAlchemy).
Origin = OriginFilter
ORIGINS: tuple[str, ...] = get_args(Origin)
_ORIGIN_FILTERS = {"production": PRODUCTION, "eval": runs.c.origin == "eval"}


def origin_of(row: dict[str, Any]) -> str:
    """A run's origin as ORIGINS names it."""
    return "eval" if row.get("origin") == "eval" else "production"


def report(engine: Engine, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """Per workflow, production calls: statuses, errors, tokens, cost, latency, models served
    (the pinned model's route apart from the secondary model's fallback calls). Read from the
    rollups (rollups.py), never the runs one by one: latency percentiles come from their
    histogram, within rollups.QUANTILE_ERROR of the exact ones."""
    summaries = rollup_reads.production(engine, since)
    return [_summarise(name, summaries[name]) for name in sorted(summaries)]


def _summarise(workflow: str, calls: rollup_reads.Production) -> dict[str, Any]:
    totals = calls.totals
    return {
        "workflow": workflow,
        "calls": totals.calls,
        "statuses": _most_common(calls.statuses),
        "errors": _most_common(calls.errors),
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cached_tokens": totals.cached_tokens,
        "cost_usd": round(totals.cost_usd, 6) if totals.priced_calls else None,
        "unpriced_calls": totals.calls - totals.priced_calls,
        "latency_p50_ms": _rounded(totals.percentile(50)),
        "latency_p95_ms": _rounded(totals.percentile(95)),
        "models_served": _most_common(calls.served),
        "model_mismatches": calls.mismatches,
        "fallback": {
            "calls": calls.fallback_calls,
            "models_served": _most_common(calls.fallback_served),
        },
    }


def _most_common(counts: Counter[str]) -> dict[str, int]:
    """Most first; ties by name, so the order does not depend on the database's."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {name: n for name, n in ordered if n}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def plain_row(mapping: Any) -> dict[str, Any]:
    """A row as a dict, with timestamps as aware UTC datetimes on every database."""
    out = dict(mapping)
    for key, value in out.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            out[key] = value.replace(tzinfo=timezone.utc)
    return out


def workflows_logged(engine: Engine) -> list[str]:
    """The name of every workflow with runs in the log, sorted."""
    with engine.connect() as connection:
        return sorted(connection.scalars(select(runs.c.workflow).distinct()).all())


def runs_of(engine: Engine, workflow: str) -> list[dict[str, Any]]:
    """Every run of a workflow, whole (prompt parts put back), oldest first."""
    query = select(runs).where(runs.c.workflow == workflow).order_by(runs.c.id)
    with engine.connect() as connection:
        found = [plain_row(row._mapping) for row in connection.execute(query)]
        expand_runs(connection, found)
    return found


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


def guard_refusals(engine: Engine, workflow: str, since: datetime) -> list[dict[str, Any]]:
    """The workflow's calls sent to the fallback before any request since `since` (NOT_SENT: a
    guard refused them, or their key could not be had), per error type: how many, and when the
    last one started. These outlast the outage that caused them
    (a budget that could not be checked leaves no other trace once the database is back)."""
    query = (
        select(
            runs.c.error_type,
            func.count().label("calls"),
            func.max(runs.c.started_at).label("last_at"),
        )
        .where(
            runs.c.workflow == workflow,
            runs.c.started_at >= since,
            runs.c.error_type.in_(NOT_SENT),
        )
        .group_by(runs.c.error_type)
        .order_by(runs.c.error_type)
    )
    with engine.connect() as connection:
        return [plain_row(row._mapping) for row in connection.execute(query)]
