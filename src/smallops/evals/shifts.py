"""Drift in production: when the served model changed, and shifts in what the outputs say.

Both read the pinned model's route only: calls a secondary model answered while the primary was
down are fallback traffic, reported as such, not a model change.

Week over week, for each enum field of a workflow's output, a chi-square test on the counts of
each value (the last 7 x 24 hours, the current one included, against the 7 x 24 before) says
whether the distribution moved: a silent model upgrade or a change in the inputs shows here
before anyone complains. The counts come from the label rollups (storage/label_rollups.py), by
whole hours, not from the runs.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from smallops.labels import enum_fields
from smallops.stats import chi_square_test
from smallops.storage.eval_log import output_schemas, served_models
from smallops.storage.hours import hour_of
from smallops.storage.label_rollups import value_counts

if TYPE_CHECKING:
    from smallops.storage.db import Engine

SHIFT_ALPHA = 0.01  # a distribution "shifted" below this p-value: few false alarms a year


def model_changes(engine: Engine, workflow: str) -> list[dict[str, Any]]:
    """Each served model with its first and last time seen, in order: a change is a new row."""
    return served_models(engine, workflow)


def distribution_shifts(
    engine: Engine, workflow: str, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Per enum field: value counts this week and last week, and the chi-square test."""
    now = now or datetime.now(timezone.utc)
    end = datetime.fromtimestamp(hour_of(now.timestamp()), timezone.utc) + timedelta(hours=1)
    week_ago, two_weeks_ago = end - timedelta(days=7), end - timedelta(days=14)
    fields: dict[str, list[Any]] = {}
    for schema in output_schemas(engine, workflow):
        for name, values in enum_fields(schema or {}).items():
            fields.setdefault(name, []).extend(v for v in values if v not in fields.get(name, []))
    counted = value_counts(
        engine, workflow, list(fields), since=two_weeks_ago, split=week_ago, until=end
    )
    counts = {
        name: {"this_week": Counter(this), "last_week": Counter(last)}
        for name, (this, last) in counted.items()
    }
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
