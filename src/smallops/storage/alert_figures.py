"""What the alert rules read that no other module reads: cost over several windows at once,
recent calls of the pinned route, mismatched served models, the latest breaker event and the
latest gated eval run. Each is one indexed query; none returns prompt or output text.

Production only: eval traffic (origin 'eval') is left out everywhere. The pinned model's route
is origin 'app' or unset (in the rollups, '' stands for unset).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, and_, case, func, literal, or_, select

from smallops.storage.queries import PRIMARY
from smallops.storage.schema import eval_runs, guard_events, run_rollups, runs

#: The gate's verdicts: an eval run recorded by `smallops eval --ci` carries one of these.
GATED = ("pass", "inconclusive", "regression")


@dataclass(frozen=True)
class WindowCost:
    """A workflow's production calls in one window: unpriced calls are in `calls` only."""

    calls: int = 0
    priced_calls: int = 0
    cost_usd: float = 0.0


def window_costs(
    engine: Engine, windows: Sequence[tuple[datetime, datetime]]
) -> dict[tuple[str, int], WindowCost]:
    """Per (workflow, window index), the production calls whose hour is in that window
    [start, end) (whole hours, from the rollups; windows must not overlap): one query for
    every workflow and window."""
    if not windows:
        return {}
    r = run_rollups.c
    index = case(
        *(
            (and_(r.hour >= start, r.hour < end), literal(i))
            for i, (start, end) in enumerate(windows)
        ),
        else_=literal(-1),
    ).label("window")
    within = or_(*(and_(r.hour >= start, r.hour < end) for start, end in windows))
    query = (
        select(
            r.workflow,
            index,
            func.sum(r.calls).label("calls"),
            func.sum(r.priced_calls).label("priced_calls"),
            func.sum(r.cost_usd).label("cost_usd"),
        )
        .where(r.origin != "eval", within)
        .group_by(r.workflow, index)
    )
    with engine.connect() as connection:
        return {
            (row.workflow, int(row.window)): WindowCost(
                int(row.calls), int(row.priced_calls), float(row.cost_usd)
            )
            for row in connection.execute(query)
            if int(row.window) >= 0
        }


@dataclass(frozen=True)
class RecentCalls:
    """A workflow's production calls on the pinned route in a short window."""

    calls: int = 0
    errors: int = 0  # ended with an error type
    refusals: int = 0  # the model refused (error type `refusal`)
    fallbacks: int = 0  # the fallback did the work (status in `fallback_statuses`)


def recent_calls(
    engine: Engine,
    workflow: str,
    since: datetime,
    until: datetime,
    *,
    refusal: str,
    fallback_statuses: Collection[str],
) -> RecentCalls:
    """Counts of the pinned route's production calls started in [since, until), from the runs
    through the (workflow, started_at) index: a short window holds few runs."""
    c = runs.c
    query = select(
        func.count().label("calls"),
        func.coalesce(func.sum(case((c.error_type.is_not(None), 1), else_=0)), 0),
        func.coalesce(func.sum(case((c.error_type == refusal, 1), else_=0)), 0),
        func.coalesce(func.sum(case((c.status.in_(sorted(fallback_statuses)), 1), else_=0)), 0),
    ).where(c.workflow == workflow, c.started_at >= since, c.started_at < until, PRIMARY)
    with engine.connect() as connection:
        calls, errors, refusals, fallbacks = connection.execute(query).one()
    return RecentCalls(int(calls), int(errors), int(refusals), int(fallbacks))


@dataclass(frozen=True)
class Mismatch:
    """Calls on the pinned route that a model other than the requested one answered."""

    requested: str
    served: str
    calls: int


def model_mismatches(
    engine: Engine, workflow: str, since: datetime, until: datetime
) -> list[Mismatch]:
    """Per (requested, served) model, the pinned route's production calls in [since, until)
    (whole hours, from the rollups) flagged as answered by another model; most calls first."""
    r = run_rollups.c
    mismatched = func.sum(r.model_mismatches).label("mismatched")
    query = (
        select(r.model_requested, r.model_served, mismatched)
        .where(
            r.workflow == workflow,
            r.hour >= since,
            r.hour < until,
            r.origin.in_(("", "app")),
            r.model_served != "",
            r.model_mismatches > 0,
        )
        .group_by(r.model_requested, r.model_served)
    )
    with engine.connect() as connection:
        found = [
            Mismatch(requested, served, int(calls))
            for requested, served, calls in connection.execute(query)
        ]
    return sorted(found, key=lambda m: (-m.calls, m.served, m.requested))


def latest_guard_event(
    engine: Engine, workflow: str, guard: str, key: str, until: datetime
) -> dict[str, Any] | None:
    """The workflow's latest event of one guard and key at or before `until` (its `after`,
    `reason` and `at`), or None."""
    g = guard_events.c
    query = (
        select(g.after, g.reason, g.at)
        .where(g.workflow == workflow, g.guard == guard, g.key == key, g.at <= until)
        .order_by(g.at.desc(), g.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        return None
    return {"after": row.after, "reason": row.reason, "at": _utc(row.at)}


def latest_gated_eval(engine: Engine, workflow: str, until: datetime) -> dict[str, Any] | None:
    """The workflow's latest eval run started at or before `until` that the gate judged (one
    of GATED: `smallops eval --ci`; a run without --ci has no verdict, and one the model left
    cases unanswered in is UNJUDGED), or None."""
    e = eval_runs.c
    query = (
        select(e.id, e.prompt_version, e.model, e.cases, e.passed, e.verdict, e.started_at)
        .where(
            e.workflow == workflow,
            e.verdict.in_(GATED),
            e.started_at <= until,
        )
        .order_by(e.started_at.desc(), e.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        return None
    return {**row._mapping, "started_at": _utc(row.started_at)}


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
