"""Drift in production: when the served model changed, and shifts in what the outputs say.

Both read the pinned model's route only: calls a secondary model answered while the primary was
down are fallback traffic, reported as such, not a model change.

Week over week, for each enum field of a workflow's output, a chi-square test on the counts of
each value (this week against the week before) says whether the distribution moved: a silent
model upgrade or a change in the inputs shows here before anyone complains.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from smallops.labels import enum_fields
from smallops.stats import chi_square_test
from smallops.storage.eval_log import output_history, served_models

if TYPE_CHECKING:
    from sqlalchemy import Engine

SHIFT_ALPHA = 0.01  # a distribution "shifted" below this p-value: few false alarms a year


def model_changes(engine: Engine, workflow: str) -> list[dict[str, Any]]:
    """Each served model with its first and last time seen, in order: a change is a new row."""
    return served_models(engine, workflow)


def distribution_shifts(
    engine: Engine, workflow: str, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Per enum field: value counts this week and last week, and the chi-square test."""
    now = now or datetime.now(timezone.utc)
    week_ago, two_weeks_ago = now - timedelta(days=7), now - timedelta(days=14)
    history = output_history(engine, workflow, since=two_weeks_ago, until=now)
    fields: dict[str, list[Any]] = {}
    for schema in history.schemas:
        for name, values in enum_fields(schema or {}).items():
            fields.setdefault(name, []).extend(v for v in values if v not in fields.get(name, []))
    counts: dict[str, dict[str, Counter[Any]]] = defaultdict(
        lambda: {"this_week": Counter(), "last_week": Counter()}
    )
    for started_at, output in history.outputs:
        if not isinstance(output, dict):
            continue
        week = "this_week" if started_at >= week_ago else "last_week"
        for name in fields:
            if name in output:
                counts[name][week][output[name]] += 1
    shifts = []
    for name, values in fields.items():
        this, last = counts[name]["this_week"], counts[name]["last_week"]
        if not this or not last:
            continue
        statistic, df, p_value = chi_square_test(
            [[this[v] for v in values], [last[v] for v in values]]
        )
        shifts.append(
            {
                "field": name,
                "this_week": dict(this),
                "last_week": dict(last),
                "chi_square": round(statistic, 3),
                "df": df,
                "p_value": p_value,
                "shifted": p_value < SHIFT_ALPHA,
            }
        )
    return shifts
