"""What `smallops doctor` reads of the log: recent production calls, prices, first calls, the
review policies of a workflow's first month, and the drift checks (eval runs on other models).

Read-only, and cheap at millions of runs: the counts come from the hourly rollups; the runs
themselves are read only for the exact last call and for the first month of a workflow that is
past it (its runs by review policy, through the workflow-and-time index).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import Connection, Engine, func, or_, select

from smallops.kinds import UNJUDGED
from smallops.storage.schema import eval_runs, run_rollups, runs

#: A workflow's first month: its review policy should put every output before a human.
FIRST_MONTH = timedelta(days=30)
_r = run_rollups.c
_NOT_EVAL_ROLLUP = _r.origin != "eval"
_NOT_EVAL_RUN = or_(runs.c.origin.is_(None), runs.c.origin != "eval")
_PRIMARY_RUN = or_(runs.c.origin.is_(None), runs.c.origin == "app")


@dataclass
class WorkflowCalls:
    """One workflow's production calls (eval traffic left out) in the window asked for."""

    calls: int = 0
    priced_calls: int = 0
    cost_usd: float = 0.0
    model_mismatches: int = 0
    unpriced: Counter[str] = field(default_factory=Counter)  # provider:model -> calls


@dataclass(frozen=True)
class PracticeLog:
    """The log's side of the scorecard."""

    backend: str  # "sqlite" or "postgresql"
    recent: dict[str, int]  # workflow -> production calls in the recent days
    window: dict[str, WorkflowCalls]  # workflow -> production calls in the window
    first_call: dict[str, datetime]  # workflow -> its first production call
    last_call: datetime | None  # the last production call of any workflow
    first_month: dict[str, Counter[str]]  # workflow -> review policy -> runs, first 30 days
    drift_checks: dict[str, dict[str, datetime]]  # workflow -> model -> its latest eval run


def practice_log(
    engine: Engine,
    now: datetime,
    recent: timedelta = timedelta(days=7),
    window: timedelta = timedelta(days=30),
) -> PracticeLog:
    """Everything the scorecard asks of the log as of `now`, read in one connection: calls in
    the `recent` days and the `window` before it (whole hours, the current one included)."""
    with engine.connect() as connection:
        first, last_hour = _first_and_last_hours(connection)
        return PracticeLog(
            backend=engine.dialect.name,
            recent=_recent(connection, now - recent),
            window=_window(connection, now - window),
            first_call=first,
            last_call=_last_call(connection, last_hour),
            first_month={
                workflow: _first_month(connection, workflow, start)
                for workflow, start in first.items()
                if start + FIRST_MONTH <= now
            },
            drift_checks=_eval_runs_by_model(connection),
        )


def _recent(connection: Connection, since: datetime) -> dict[str, int]:
    query = (
        select(_r.workflow, func.sum(_r.calls))
        .where(_NOT_EVAL_ROLLUP, _r.hour >= _hour(since))
        .group_by(_r.workflow)
    )
    return {workflow: int(calls) for workflow, calls in connection.execute(query)}


def _window(connection: Connection, since: datetime) -> dict[str, WorkflowCalls]:
    query = (
        select(
            _r.workflow,
            _r.model_requested,
            func.sum(_r.calls),
            func.sum(_r.priced_calls),
            func.sum(_r.cost_usd),
            func.sum(_r.model_mismatches),
        )
        .where(_NOT_EVAL_ROLLUP, _r.hour >= _hour(since))
        .group_by(_r.workflow, _r.model_requested)
    )
    found: dict[str, WorkflowCalls] = {}
    for workflow, model, calls, priced, cost, mismatches in connection.execute(query):
        figures = found.setdefault(workflow, WorkflowCalls())
        figures.calls += int(calls)
        figures.priced_calls += int(priced)
        figures.cost_usd += float(cost)
        figures.model_mismatches += int(mismatches)
        if int(priced) < int(calls):
            provider = _provider_of(connection, workflow, model, since)
            figures.unpriced[f"{provider}:{model}"] += int(calls) - int(priced)
    return found


def _provider_of(connection: Connection, workflow: str, model: str, since: datetime) -> str:
    """The provider a workflow called `model` on (rollups keep the bare model id), as
    [prices."PROVIDER:MODEL"] names it."""
    query = (
        select(runs.c.provider)
        .where(
            runs.c.workflow == workflow,
            runs.c.started_at >= _hour(since),
            runs.c.model_requested == model,
        )
        .limit(1)
    )
    return connection.execute(query).scalar() or "PROVIDER"


def _first_and_last_hours(
    connection: Connection,
) -> tuple[dict[str, datetime], datetime | None]:
    query = (
        select(_r.workflow, func.min(_r.hour), func.max(_r.hour))
        .where(_NOT_EVAL_ROLLUP)
        .group_by(_r.workflow)
    )
    first, last = {}, None
    for workflow, low, high in connection.execute(query).all():
        first[workflow] = _first_moment(connection, workflow, _utc(low))
        last = _utc(high) if last is None else max(last, _utc(high))
    return first, last


def _first_moment(connection: Connection, workflow: str, hour: datetime) -> datetime:
    """The moment of a workflow's first production call, read from the runs of its hour."""
    query = select(func.min(runs.c.started_at)).where(
        runs.c.workflow == workflow,
        runs.c.started_at >= hour,
        runs.c.started_at < hour + timedelta(hours=1),
        _NOT_EVAL_RUN,
    )
    found = connection.execute(query).scalar()
    return hour if found is None else _utc(found)


def _last_call(connection: Connection, last_hour: datetime | None) -> datetime | None:
    """The moment of the last production call, read from the runs of its hour only."""
    if last_hour is None:
        return None
    query = select(func.max(runs.c.started_at)).where(runs.c.started_at >= last_hour, _NOT_EVAL_RUN)
    found = connection.execute(query).scalar()
    return last_hour if found is None else _utc(found)


def _first_month(connection: Connection, workflow: str, start: datetime) -> Counter[str]:
    """The workflow's pinned-route production runs of its first month, by review policy."""
    query = (
        select(runs.c.review_policy, func.count())
        .where(
            runs.c.workflow == workflow,
            runs.c.started_at >= start,
            runs.c.started_at < start + FIRST_MONTH,
            _PRIMARY_RUN,
        )
        .group_by(runs.c.review_policy)
    )
    return Counter({policy: int(n) for policy, n in connection.execute(query)})


def _eval_runs_by_model(connection: Connection) -> dict[str, dict[str, datetime]]:
    """Per workflow and model, the start of its latest eval run that judged something."""
    query = (
        select(eval_runs.c.workflow, eval_runs.c.model, func.max(eval_runs.c.started_at))
        .where(or_(eval_runs.c.verdict.is_(None), eval_runs.c.verdict != UNJUDGED))
        .group_by(eval_runs.c.workflow, eval_runs.c.model)
    )
    found: dict[str, dict[str, datetime]] = {}
    for workflow, model, latest in connection.execute(query):
        found.setdefault(workflow, {})[model] = _utc(latest)
    return found


def _hour(moment: datetime) -> datetime:
    """The start of the moment's hour, in UTC (rollups are kept by whole hours)."""
    moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment
    return moment.replace(minute=0, second=0, microsecond=0)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
