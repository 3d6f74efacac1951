"""The eval log: the answer cache, eval runs and their results, and what evals read of runs.

The eval runner, the gate, `drift`, `check` and the production drift report ask these; none of
them writes SQL of its own. Values come in and go out as plain records, so this module knows
nothing of workflows or eval sets.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    func,
    or_,
    select,
    update,
)

from smallops.kinds import UNJUDGED
from smallops.storage import rollup_reads
from smallops.storage.db import write_transaction
from smallops.storage.queries import PRIMARY
from smallops.storage.schema import eval_cache, eval_results, eval_runs, prompt_versions, runs


@dataclass(frozen=True)
class CacheScope:
    """The answers one workflow's prompt version gave on one model (the bare model id)."""

    workflow: str
    prompt_version: str
    model: str


@dataclass(frozen=True)
class CacheEntry:
    """A validated output to keep, under its cache key."""

    key: str
    output: Any
    run_id: str | None
    repeat: int


@dataclass(frozen=True)
class EvalRunRow:
    """An eval run as the log keeps it (its cost is summed from its runs when it is saved)."""

    id: str
    workflow: str
    prompt_version: str
    model: str  # provider:id
    dataset: str
    cases: int
    repeat: int
    passed: int
    git_commit: str | None
    started_at: datetime
    finished_at: datetime | None
    summary: dict[str, Any]


@dataclass(frozen=True)
class EvalResultRow:
    """One case at one repeat of an eval run."""

    case_id: str
    repeat: int
    run_id: str | None
    passed: bool
    cached: bool
    output: Any
    error: str | None
    checks: list[dict[str, Any]]


@dataclass(frozen=True)
class MeasuredCost:
    """What the calls made in an eval run cost: None when none of them was priced."""

    cost_usd: float | None
    unpriced: int


def cached_outputs(engine: Engine, scope: CacheScope) -> dict[str, tuple[Any, str]]:
    """The cached answers of a scope: cache key -> (output, the run that answered)."""
    query = select(eval_cache.c.key, eval_cache.c.output, eval_cache.c.run_id).where(
        eval_cache.c.workflow == scope.workflow,
        eval_cache.c.prompt_version == scope.prompt_version,
        eval_cache.c.model == scope.model,
    )
    with engine.connect() as connection:
        return {key: (output, run_id) for key, output, run_id in connection.execute(query)}


def save_eval_run(
    engine: Engine,
    run: EvalRunRow,
    results: Sequence[EvalResultRow],
    *,
    measured: Sequence[str],
    scope: CacheScope,
    fresh: Sequence[CacheEntry],
) -> MeasuredCost:
    """The eval run with its cost (summed over `measured`, the runs made now), its results, and
    the new validated outputs for the cache: one transaction, which reads then writes, so on
    SQLite it takes the write lock first (a plain BEGIN fails at once with "database is locked"
    when the log writer commits between its read and its write). Returns the cost it stored."""
    with write_transaction(engine) as connection:
        cost = _measured_cost(connection, measured)
        now = datetime.now(timezone.utc)
        keys = [entry.key for entry in fresh]
        existing = (
            {
                row.key
                for row in connection.execute(
                    select(eval_cache.c.key).where(eval_cache.c.key.in_(keys))
                )
            }
            if fresh
            else set()
        )
        new = [entry for entry in fresh if entry.key not in existing]
        if new:
            connection.execute(
                eval_cache.insert(),
                [
                    {
                        "key": entry.key,
                        "output": entry.output,
                        "run_id": entry.run_id,
                        "repeat": entry.repeat,
                        "workflow": scope.workflow,
                        "prompt_version": scope.prompt_version,
                        "model": scope.model,
                        "created_at": now,
                    }
                    for entry in new
                ],
            )
        connection.execute(
            eval_runs.insert().values(
                id=run.id,
                workflow=run.workflow,
                prompt_version=run.prompt_version,
                model=run.model,
                dataset=run.dataset,
                cases=run.cases,
                repeat=run.repeat,
                passed=run.passed,
                cost_usd=cost.cost_usd,
                verdict=None,
                git_commit=run.git_commit,
                started_at=run.started_at,
                finished_at=run.finished_at or now,
                # with the calls made now and how many were unpriced, so a cost is never read as $0
                summary={**run.summary, "calls_made": len(measured), "unpriced": cost.unpriced},
            )
        )
        if results:  # (an empty list would insert one row of defaults)
            connection.execute(
                eval_results.insert(),
                [
                    {
                        "eval_run_id": run.id,
                        "case_id": result.case_id,
                        "repeat": result.repeat,
                        "run_id": result.run_id,
                        "passed": result.passed,
                        "cached": result.cached,
                        "output": result.output,
                        "error": result.error,
                        "checks": result.checks,
                    }
                    for result in results
                ],
            )
    return cost


def _measured_cost(connection: Connection, run_ids: Sequence[str]) -> MeasuredCost:
    if not run_ids:
        return MeasuredCost(cost_usd=0.0, unpriced=0)
    total, calls, priced = connection.execute(
        select(func.sum(runs.c.cost_usd), func.count(), func.count(runs.c.cost_usd)).where(
            runs.c.id.in_(run_ids)
        )
    ).one()
    return MeasuredCost(
        cost_usd=float(total or 0.0) if priced else None, unpriced=int(calls - priced)
    )


def record_verdict(engine: Engine, eval_run_id: str, verdict: str) -> None:
    """The gate's verdict on an eval run (UNJUDGED when the model left cases unanswered)."""
    with engine.begin() as connection:
        connection.execute(
            update(eval_runs).where(eval_runs.c.id == eval_run_id).values(verdict=verdict)
        )


def evaluated_versions(engine: Engine) -> set[tuple[str, str]]:
    """(workflow, prompt version) pairs with an eval run in the log (a run the model left cases
    unanswered in evaluated nothing)."""
    query = select(eval_runs.c.workflow, eval_runs.c.prompt_version).where(
        or_(eval_runs.c.verdict.is_(None), eval_runs.c.verdict != UNJUDGED)
    )
    with engine.connect() as connection:
        return {(name, version) for name, version in connection.execute(query)}


def latencies(engine: Engine, run_ids: Collection[str]) -> list[float]:
    """The latencies (ms) of these runs, in no particular order."""
    query = select(runs.c.latency_ms).where(runs.c.id.in_(list(run_ids)))
    with engine.connect() as connection:
        return list(connection.execute(query).scalars())


def served_models(engine: Engine, workflow: str) -> list[dict[str, Any]]:
    """Each model that served the workflow's pinned route (fallback traffic aside), with its
    first and last time seen and its calls, in order of first seen: a change is a new row.
    Read from the rollups (a few rows per hour) and the runs of the first and last hours."""
    with engine.connect() as connection:
        from_rollups = rollup_reads.served_models(connection, workflow)
    if from_rollups is not None:
        return from_rollups
    query = (
        select(
            runs.c.model_served,
            func.min(runs.c.started_at),
            func.max(runs.c.started_at),
            func.count(),
        )
        .where(runs.c.workflow == workflow, runs.c.model_served.is_not(None), PRIMARY)
        .group_by(runs.c.model_served)
        .order_by(func.min(runs.c.started_at))
    )
    with engine.connect() as connection:
        return [
            {
                "model": model,
                "first_seen": _aware(first),
                "last_seen": _aware(last),
                "calls": int(calls),
            }
            for model, first, last, calls in connection.execute(query)
        ]


@dataclass(frozen=True)
class OutputHistory:
    """A workflow's output schemas (every prompt version's) and its pinned route's outputs."""

    schemas: list[dict[str, Any] | None]
    outputs: list[tuple[datetime, Any]]  # (started at, aware UTC; the output)


def output_history(
    engine: Engine, workflow: str, since: datetime, until: datetime
) -> OutputHistory:
    """The workflow's output schemas, and the outputs its pinned route gave in [since, until)."""
    with engine.connect() as connection:
        schemas = (
            connection.execute(
                select(prompt_versions.c.output_schema).where(
                    prompt_versions.c.workflow == workflow
                )
            )
            .scalars()
            .all()
        )
        rows = connection.execute(
            select(runs.c.started_at, runs.c.output).where(
                runs.c.workflow == workflow,
                PRIMARY,
                runs.c.output.is_not(None),
                runs.c.started_at >= since,
                runs.c.started_at < until,
            )
        ).all()
    return OutputHistory(
        schemas=list(schemas), outputs=[(_aware(started), output) for started, output in rows]
    )


def output_schemas(engine: Engine, workflow: str) -> list[dict[str, Any] | None]:
    """The workflow's output schemas, every prompt version's."""
    with engine.connect() as connection:
        query = select(prompt_versions.c.output_schema).where(
            prompt_versions.c.workflow == workflow
        )
        return list(connection.execute(query).scalars().all())


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# What eval history reads: eval runs newest first a page at a time, one run with its results,
# and the contents of the runs that answered its cases.

#: The columns a list of eval runs shows (not the summary's per-case scores).
_LISTED = (
    eval_runs.c.id,
    eval_runs.c.workflow,
    eval_runs.c.prompt_version,
    eval_runs.c.model,
    eval_runs.c.dataset,
    eval_runs.c.cases,
    eval_runs.c.repeat,
    eval_runs.c.passed,
    eval_runs.c.cost_usd,
    eval_runs.c.verdict,
    eval_runs.c.git_commit,
    eval_runs.c.started_at,
    eval_runs.c.finished_at,
)


def list_eval_runs(
    engine: Engine,
    *,
    workflow: str | None = None,
    before: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Eval runs newest first (by started_at, then id), of one workflow or all; `before` is the
    (started_at, id) of the last row of the previous page: keyset pagination, never OFFSET."""
    query = select(
        *_LISTED,
        eval_runs.c.summary["unpriced"].label("unpriced"),
        eval_runs.c.summary["calls_made"].label("calls_made"),
    ).order_by(eval_runs.c.started_at.desc(), eval_runs.c.id.desc())
    if workflow is not None:
        query = query.where(eval_runs.c.workflow == workflow)
    if before is not None:
        started, run_id = before
        query = query.where(
            or_(
                eval_runs.c.started_at < started,
                and_(eval_runs.c.started_at == started, eval_runs.c.id < run_id),
            )
        )
    with engine.connect() as connection:
        return [_plain(row._mapping) for row in connection.execute(query.limit(limit))]


def eval_run(engine: Engine, eval_run_id: str) -> dict[str, Any] | None:
    """One eval run with its summary (None if there is no such run)."""
    query = select(*_LISTED, eval_runs.c.summary).where(eval_runs.c.id == eval_run_id)
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else _plain(row._mapping)


def eval_run_with_results(engine: Engine, eval_run_id: str) -> dict[str, Any] | None:
    """One eval run, its results (by case and repeat) under "results", and its prompt version's
    output schema under "output_schema" (None if not recorded); None if there is no such run."""
    run = eval_run(engine, eval_run_id)
    if run is None:
        return None
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                eval_results.c.case_id,
                eval_results.c.repeat,
                eval_results.c.run_id,
                eval_results.c.passed,
                eval_results.c.cached,
                eval_results.c.checks,
                eval_results.c.output,
                eval_results.c.error,
            )
            .where(eval_results.c.eval_run_id == eval_run_id)
            .order_by(eval_results.c.case_id, eval_results.c.repeat)
        ).all()
        schema = connection.execute(
            select(prompt_versions.c.output_schema).where(
                prompt_versions.c.id == run["prompt_version"]
            )
        ).scalar()
    run["results"] = [dict(row._mapping) for row in rows]
    run["output_schema"] = schema
    return run


def previous_eval_run(engine: Engine, run: dict[str, Any]) -> str | None:
    """The id of the eval run of the same workflow just before `run` (None for its first)."""
    started, run_id = run["started_at"], run["id"]
    query = (
        select(eval_runs.c.id)
        .where(
            eval_runs.c.workflow == run["workflow"],
            or_(
                eval_runs.c.started_at < started,
                and_(eval_runs.c.started_at == started, eval_runs.c.id < run_id),
            ),
        )
        .order_by(eval_runs.c.started_at.desc(), eval_runs.c.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        found: str | None = connection.execute(query).scalar()
    return found


def eval_workflows(engine: Engine) -> dict[str, int]:
    """Each workflow with eval runs in the log, and how many."""
    query = (
        select(eval_runs.c.workflow, func.count())
        .group_by(eval_runs.c.workflow)
        .order_by(eval_runs.c.workflow)
    )
    with engine.connect() as connection:
        return {name: int(count) for name, count in connection.execute(query)}


def eval_versions(engine: Engine, workflow: str | None, limit: int = 30) -> list[dict[str, Any]]:
    """Per workflow and prompt version: its eval runs, when first and last evaluated, and the
    best and worst pass rates; the most recently evaluated first."""
    rate = eval_runs.c.passed * 1.0 / func.nullif(eval_runs.c.cases, 0)
    query = (
        select(
            eval_runs.c.workflow,
            eval_runs.c.prompt_version,
            func.count().label("eval_runs"),
            func.min(eval_runs.c.started_at).label("first"),
            func.max(eval_runs.c.started_at).label("last"),
            func.min(rate).label("worst"),
            func.max(rate).label("best"),
        )
        .group_by(eval_runs.c.workflow, eval_runs.c.prompt_version)
        .order_by(func.max(eval_runs.c.started_at).desc())
        .limit(limit)
    )
    if workflow is not None:
        query = query.where(eval_runs.c.workflow == workflow)
    with engine.connect() as connection:
        return [_plain(row._mapping) for row in connection.execute(query)]


def run_contents(engine: Engine, run_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """The inputs of these runs and how much of their content the log kept (`content`: None
    for full), by run id: what eval history shows of the cases' inputs."""
    ids = sorted(set(run_ids))
    found: dict[str, dict[str, Any]] = {}
    with engine.connect() as connection:
        for start in range(0, len(ids), 500):
            query = select(runs.c.id, runs.c.content, runs.c.inputs).where(
                runs.c.id.in_(ids[start : start + 500])
            )
            for run_id, content, inputs in connection.execute(query):
                found[run_id] = {"content": content, "inputs": inputs}
    return found


def _plain(mapping: Any) -> dict[str, Any]:
    return {k: _aware(v) if isinstance(v, datetime) else v for k, v in dict(mapping).items()}
