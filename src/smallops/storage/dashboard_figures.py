"""What the web dashboards read: the rollups grouped by UTC day, prompt version and model, the
review backlog and the decisions taken. Small, indexed tables only, never the runs.

Ranges are whole hours (the rollups' grain): callers round theirs to the hour. Eval traffic
(origin 'eval') is left out of every figure here; '' in a key stands for NULL as in the rollups.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, String, and_, case, func, literal, select, text, type_coerce

from smallops.storage.rollups import Totals
from smallops.storage.schema import review_decisions, review_items, run_rollups


@dataclass(frozen=True)
class Group:
    """The production calls of one workflow, UTC day and key: `recent` tells whether they
    started at or after the `split` moment the caller gave (False when none was given)."""

    workflow: str
    day: str  # YYYY-MM-DD, UTC
    recent: bool
    prompt_version: str
    model_requested: str
    model_served: str
    origin: str
    status: str
    error_type: str
    totals: Totals


def _day(dialect: str) -> Any:
    r = run_rollups.c
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", r.hour), "YYYY-MM-DD")
    return func.substr(r.hour, 1, 10)


def groups(
    engine: Engine,
    since: datetime,
    until: datetime,
    workflow: str | None = None,
    split: datetime | None = None,
    by_day: bool = True,
) -> Iterator[Group]:
    """Production calls that started in [since, until) (whole hours), per workflow, UTC day
    (unless not `by_day`: day is then '') and key, summed by the database: a few rows per
    workflow and day, however many runs."""
    r = run_rollups.c
    day = (_day(engine.dialect.name) if by_day else literal("")).label("day")
    recent = (case((r.hour >= split, 1), else_=0) if split is not None else literal(0)).label(
        "recent"
    )
    keys = (
        r.workflow,
        day,
        recent,
        r.prompt_version,
        r.model_requested,
        r.model_served,
        r.origin,
        r.status,
        r.error_type,
    )
    query = select(
        *keys,
        func.sum(r.calls).label("calls"),
        func.sum(r.priced_calls).label("priced_calls"),
        func.sum(r.cost_usd).label("cost_usd"),
        func.sum(r.input_tokens).label("input_tokens"),
        func.sum(r.output_tokens).label("output_tokens"),
        func.sum(r.cached_tokens).label("cached_tokens"),
        func.sum(r.model_mismatches).label("model_mismatches"),
        func.sum(r.latency_sum_ms).label("latency_sum_ms"),
        func.min(r.latency_min_ms).label("low"),
        func.max(r.latency_max_ms).label("high"),
    ).where(r.origin != "eval", r.hour >= since, r.hour < until)
    if workflow is not None:
        query = query.where(r.workflow == workflow)
    query = query.group_by(*keys)
    with engine.connect() as connection:
        for row in connection.execute(query):
            yield Group(
                workflow=row.workflow,
                day=row.day,
                recent=bool(row.recent),
                prompt_version=row.prompt_version,
                model_requested=row.model_requested,
                model_served=row.model_served,
                origin=row.origin,
                status=row.status,
                error_type=row.error_type,
                totals=Totals.summed(row),
            )


@dataclass(frozen=True)
class DayTotals:
    """A workflow's production calls on one UTC day (the part before or after `split`): what a
    daily chart shows. `primary` and `errors` are the calls to the pinned model's route (origin
    other than 'fallback') and those of them that ended with an error type."""

    workflow: str
    day: str
    recent: bool
    calls: int
    priced_calls: int
    cost_usd: float
    primary: int
    errors: int


def day_totals(
    engine: Engine,
    since: datetime,
    until: datetime,
    split: datetime | None = None,
    workflow: str | None = None,
) -> Iterator[DayTotals]:
    """Per workflow and UTC day, the production calls in [since, until): grouped by those two
    keys only, so many weeks of every workflow cost one short sort."""
    r = run_rollups.c
    day = _day(engine.dialect.name).label("day")
    recent = (case((r.hour >= split, 1), else_=0) if split is not None else literal(0)).label(
        "recent"
    )
    primary = r.origin != "fallback"
    query = (
        select(
            r.workflow,
            day,
            recent,
            func.sum(r.calls).label("calls"),
            func.sum(r.priced_calls).label("priced_calls"),
            func.sum(r.cost_usd).label("cost_usd"),
            func.sum(case((primary, r.calls), else_=0)).label("primary"),
            func.sum(case((and_(primary, r.error_type != ""), r.calls), else_=0)).label("errors"),
        )
        .where(r.origin != "eval", r.hour >= since, r.hour < until)
        .group_by(r.workflow, day, recent)
    )
    if workflow is not None:
        query = query.where(r.workflow == workflow)
    with engine.connect() as connection:
        for row in connection.execute(query):
            yield DayTotals(
                workflow=row.workflow,
                day=row.day,
                recent=bool(row.recent),
                calls=int(row.calls),
                priced_calls=int(row.priced_calls),
                cost_usd=float(row.cost_usd),
                primary=int(row.primary),
                errors=int(row.errors),
            )


#: (workflow, day, prompt version, served model) with a latency histogram: {bucket: runs}.
HistogramKey = tuple[str, str, str, str]


def histograms(
    engine: Engine,
    since: datetime,
    until: datetime,
    workflow: str | None = None,
    detail: bool = False,
) -> dict[HistogramKey, Counter[int]]:
    """Production latency histograms of the calls in [since, until): per workflow, or with
    `detail` per workflow, UTC day, prompt version and served model (day, version and model
    are '' without it).

    Each rollup row's histogram is read whole and added up here: on both engines that takes
    half the time of summing them in SQL, where every bucket of every row is sorted by its
    group (GROUP BY over json_each / jsonb_each_text)."""
    r = run_rollups.c
    day = _day(engine.dialect.name) if detail else literal("")
    version = r.prompt_version if detail else literal("")
    model = r.model_served if detail else literal("")
    # as stored: JSON text on SQLite (parsed below), a dict from psycopg for JSONB
    stored = type_coerce(r.latency_histogram, String)
    query = select(r.workflow, day, version, model, stored).where(
        r.origin != "eval", r.hour >= since, r.hour < until
    )
    if workflow is not None:
        query = query.where(r.workflow == workflow)
    sums: dict[HistogramKey, dict[str, int]] = {}
    loads = json.loads
    with engine.connect() as connection:
        for name, day_, version_, model_, histogram in connection.execute(query):
            key = (name, day_, version_, model_)
            found = sums.get(key)
            if found is None:
                found = sums[key] = {}
            buckets = histogram if isinstance(histogram, dict) else loads(histogram)
            for bucket, n in buckets.items():
                found[bucket] = found.get(bucket, 0) + int(n)
    return {
        key: Counter({int(bucket): n for bucket, n in found.items()}) for key, found in sums.items()
    }


@dataclass(frozen=True)
class Backlog:
    """A workflow's pending review items: how many, and when the oldest was queued."""

    pending: int
    oldest: datetime | None


def backlog(engine: Engine) -> dict[str, Backlog]:
    """Pending items per workflow and the oldest one's time, from the queue's index."""
    i = review_items.c
    query = (
        select(i.workflow, func.count(), func.min(i.created_at))
        .where(i.state == "pending")
        .group_by(i.workflow)
    )
    with engine.connect() as connection:
        return {
            name: Backlog(int(n), _utc(oldest)) for name, n, oldest in connection.execute(query)
        }


def decisions(
    engine: Engine, since: datetime, until: datetime | None = None, workflow: str | None = None
) -> dict[str, Counter[str]]:
    """Per workflow, the reviewers' actions (approve, correct, reject, skip) taken in
    [since, until)."""
    d = review_decisions.c
    conditions = [d.decided_at >= since]
    if until is not None:
        conditions.append(d.decided_at < until)
    if workflow is not None:
        conditions.append(d.workflow == workflow)
    query = (
        select(d.workflow, d.action, func.count())
        .where(and_(*conditions))
        .group_by(d.workflow, d.action)
    )
    out: dict[str, Counter[str]] = {}
    with engine.connect() as connection:
        for name, action, n in connection.execute(query):
            out.setdefault(name, Counter())[action] += int(n)
    return out


#: Each workflow once, by hopping along the (workflow, hour) index from one name to the next:
#: a few index lookups per workflow, where DISTINCT would read every rollup row.
_WORKFLOWS = text(
    "WITH RECURSIVE names(name) AS ("
    " SELECT min(workflow) FROM run_rollups"
    " UNION ALL"
    " SELECT (SELECT min(workflow) FROM run_rollups WHERE workflow > names.name)"
    " FROM names WHERE names.name IS NOT NULL"
    ") SELECT name FROM names WHERE name IS NOT NULL"
)


def logged_workflows(engine: Engine) -> list[str]:
    """Every workflow in the rollups (production or eval calls), sorted."""
    with engine.connect() as connection:
        return sorted(str(name) for name in connection.scalars(_WORKFLOWS))


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
