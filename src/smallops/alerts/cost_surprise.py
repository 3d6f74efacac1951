"""The cost_surprise rule: this ISO week's production cost so far against the same point of
the four weeks before, read from the hourly rollups (cheap at a million runs)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from smallops.alerts.model import Finding
from smallops.alerts.wording import link, money
from smallops.dashboards.ranges import ceil_hour, floor_hour
from smallops.storage import alert_figures

if TYPE_CHECKING:
    from smallops.alerts.rules import Reads
    from smallops.storage.db import Engine

WEEK = timedelta(days=7)
WEEKS_BEFORE = 4


@dataclass(frozen=True)
class CostWeeks:
    """This ISO week up to now and the same stretch of the four weeks before: window 0 is this
    week's, window k the one k weeks earlier. To the hour (the rollups' grain): the current
    hour counts whole in every week, so at the week's end each window is the full week."""

    monday: datetime
    windows: list[tuple[datetime, datetime]]
    costs: dict[tuple[str, int], alert_figures.WindowCost]

    @property
    def period(self) -> str:
        return iso_week(self.monday)


def iso_week(moment: datetime) -> str:
    """ "2026-W49": the ISO week of a moment (UTC)."""
    year, week, _ = moment.astimezone(timezone.utc).isocalendar()
    return f"{year}-W{week:02d}"


def cost_weeks(engine: Engine, now: datetime) -> CostWeeks:
    today = floor_hour(now).replace(hour=0)
    monday = today - timedelta(days=today.weekday())
    elapsed = ceil_hour(now) - monday
    windows = [(monday - k * WEEK, monday - k * WEEK + elapsed) for k in range(WEEKS_BEFORE + 1)]
    return CostWeeks(monday, windows, alert_figures.window_costs(engine, windows))


def comparable_weeks(
    earlier: list[alert_figures.WindowCost],
) -> list[alert_figures.WindowCost]:
    """The earlier weeks a mean is taken over (`earlier[0]` is last week): from the oldest
    with calls to last week, a week without calls counting $0. Weeks before the workflow's first
    calls are not $0 weeks, and a week whose calls were all unpriced has no known cost."""
    with_calls = [k for k, week in enumerate(earlier) if week.calls]
    if not with_calls:
        return []
    return [
        week
        for week in earlier[: max(with_calls) + 1]
        if not (week.calls and not week.priced_calls)
    ]


def cost_surprise(reads: Reads, workflow: str, t: Mapping[str, Any]) -> list[Finding]:
    """This week's production cost so far against the mean of the same point of the weeks
    before: fires when it is both `increase` (a fraction) and `floor_usd` above that mean."""
    weeks = reads.once("cost_weeks", lambda: cost_weeks(reads.engine, reads.now))
    empty = alert_figures.WindowCost()
    this = weeks.costs.get((workflow, 0), empty)
    if not this.priced_calls:  # no known cost this week: unpriced calls are never $0
        return []
    compared = comparable_weeks(
        [weeks.costs.get((workflow, k), empty) for k in range(1, WEEKS_BEFORE + 1)]
    )
    if not compared:
        return []
    mean = math.fsum(week.cost_usd for week in compared) / len(compared)
    cost = this.cost_usd
    if cost < mean * (1 + float(t["increase"])) or cost < mean + float(t["floor_usd"]):
        return []
    change = round((cost - mean) / mean, 4) if mean > 0 else None
    shown = f"{change:+.0%}" if change is not None else "up from $0"
    unpriced = this.calls - this.priced_calls
    return [
        Finding(
            rule="cost_surprise",
            workflow=workflow,
            firing=True,
            severity=t["severity"],
            period=weeks.period,
            summary=(
                f"{workflow}: {money(cost)} of production calls this week ({weeks.period}, to "
                f"{reads.now:%a %H:%M} UTC), {shown} on the {money(mean)} mean of the same "
                f"point of the {len(compared)} weeks before"
                + (f"; {unpriced} calls unpriced" if unpriced else "")
            ),
            figures={
                "cost_usd": round(cost, 6),
                "mean_usd": round(mean, 6),
                "change": change,
                "weeks_compared": len(compared),
                "unpriced_calls": unpriced,
            },
            link=link(workflow),
        )
    ]
