"""The Overview: for each workflow, this week's production calls against the four weeks before.

"This week" is the last 168 hours, the current hour included; "before" is the 672 hours before
that, and its weekly mean is a quarter of its sum. The daily series covers the last 35 UTC days,
today included. Everything is read from the rollups and the small review tables: a few indexed
queries whatever the size of the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from smallops.dashboards.figures import Figures, change
from smallops.dashboards.guards import guard_figures
from smallops.dashboards.ranges import DAY, HOUR, Range, floor_hour, midnight
from smallops.dashboards.review import backlog_figures, decision_figures
from smallops.dashboards.together import together
from smallops.storage import dashboard_figures as stored

if TYPE_CHECKING:
    from smallops.storage.db import Engine
    from smallops.workflow import Workflow

CHART_DAYS = 35
WEEK = timedelta(days=7)
WEEKS_BEFORE = 4


def overview(
    engine: Engine, workflows: Mapping[str, Workflow[Any]], now: datetime | None = None
) -> dict[str, Any]:
    """Every workflow the project defines or the log holds, with its figures."""
    now = now or datetime.now(timezone.utc)
    end = floor_hour(now) + HOUR
    week_start = end - WEEK
    since = week_start - WEEKS_BEFORE * WEEK
    days = Range(midnight(now) - (CHART_DAYS - 1) * DAY, end).days
    names = sorted(set(workflows) | set(stored.logged_workflows(engine)))
    week = {name: Figures() for name in names}
    before = {name: Figures() for name in names}
    daily: dict[str, dict[str, Figures]] = {name: {} for name in names}
    day_rows, group_rows, found, backlog, last_week, last_month = together(
        lambda: list(stored.day_totals(engine, since, end, split=week_start)),
        lambda: list(stored.groups(engine, week_start, end)),
        lambda: stored.histograms(engine, week_start, end),
        lambda: stored.backlog(engine),
        lambda: stored.decisions(engine, now - WEEK),
        lambda: stored.decisions(engine, now - timedelta(days=30)),
    )
    for day in day_rows:
        if day.workflow not in week:  # logged since the list was read
            continue
        if not day.recent:
            before[day.workflow].add_day(day)
        if day.day >= days[0]:
            daily[day.workflow].setdefault(day.day, Figures()).add_day(day)
    for group in group_rows:
        if group.workflow in week:
            week[group.workflow].add(group)
    for (name, *_), histogram in found.items():
        if name in week:
            week[name].totals.histogram.update(histogram)
    rows = []
    for name in names:
        wf = workflows.get(name)
        rows.append(
            {
                "workflow": name,
                "defined": wf is not None,
                "pinned_model": wf.model.model if wf is not None else None,
                "week": week[name].as_dict(),
                "before_weekly_mean": _weekly_mean(before[name]),
                "change": {
                    "calls": change(week[name].totals.calls, _mean(before[name].totals.calls)),
                    "cost_usd": change(week[name].cost_usd, _mean(before[name].cost_usd)),
                },
                "days": day_series(days, daily[name]),
                "review": {
                    **backlog_figures(backlog.get(name), now),
                    "last_7_days": decision_figures(last_week.get(name)),
                    "last_30_days": decision_figures(last_month.get(name)),
                },
                "guards": guard_figures(engine, wf) if wf is not None else None,
            }
        )
    return {
        "now": now,
        "week": {"since": week_start, "until": end},
        "before": {"since": since, "until": week_start, "weeks": WEEKS_BEFORE},
        "days": {"since": days[0], "until": days[-1], "count": len(days)},
        "workflows": rows,
    }


def _mean(value: float | None) -> float | None:
    return None if value is None else value / WEEKS_BEFORE


def _weekly_mean(before: Figures) -> dict[str, Any]:
    cost = _mean(before.cost_usd)
    return {
        "calls": before.totals.calls / WEEKS_BEFORE,
        "cost_usd": None if cost is None else round(cost, 6),
        "unpriced_calls": before.unpriced / WEEKS_BEFORE,
    }


DAY_KEYS = ("calls", "cost_usd", "unpriced_calls", "errors", "error_rate")
LATENCY_KEYS = ("latency_p50_ms", "latency_p95_ms")


def day_series(
    days: list[str], found: Mapping[str, Figures], latency: bool = False
) -> list[dict[str, Any]]:
    """One row per day, days without calls included (0 calls, $0)."""
    keys = DAY_KEYS + (LATENCY_KEYS if latency else ())
    out = []
    for day in days:
        row = (found.get(day) or Figures()).as_dict()
        out.append({"day": day, **{key: row[key] for key in keys}})
    return out
