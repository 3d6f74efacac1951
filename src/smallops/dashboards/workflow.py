"""A workflow's page: the Overview's figures over a chosen range, per UTC day, and broken down
by prompt version and by served model; the review backlog and guards as they stand now."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from smallops.dashboards.figures import Figures
from smallops.dashboards.guards import guard_figures
from smallops.dashboards.overview import day_series
from smallops.dashboards.ranges import Range
from smallops.dashboards.review import backlog_figures, decision_figures
from smallops.dashboards.together import together
from smallops.errors import NotFoundError
from smallops.storage import dashboard_figures as stored

if TYPE_CHECKING:
    from smallops.storage.db import Engine
    from smallops.workflow import Workflow

#: How a call that never got a served model (it failed first) is listed among the models.
NO_MODEL = "(no answer)"
_SHOWN = 80  # characters of an unknown name an error message repeats


def workflow_figures(
    engine: Engine,
    name: str,
    workflows: Mapping[str, Workflow[Any]],
    period: Range,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The page's figures; NotFoundError if neither the project nor the log knows `name`.

    The name is checked against the known ones before any query takes it, so text no database
    stores (a NUL) is a 404 like any other unknown name."""
    now = now or datetime.now(timezone.utc)
    if name not in workflows and name not in stored.logged_workflows(engine):
        shown = name[:_SHOWN] + ("…" if len(name) > _SHOWN else "")
        raise NotFoundError(
            f"no workflow {shown!r} in this project or its log",
            hint="the Overview at /dashboard lists every workflow",
        )
    total = Figures()
    daily: dict[str, Figures] = {}
    versions: dict[str, Figures] = {}
    models: dict[str, Figures] = {}
    day_rows, group_rows, found, decided, backlog = together(
        lambda: list(stored.day_totals(engine, period.since, period.until, workflow=name)),
        lambda: list(
            stored.groups(engine, period.since, period.until, workflow=name, by_day=False)
        ),
        lambda: stored.histograms(engine, period.since, period.until, workflow=name, detail=True),
        lambda: stored.decisions(engine, period.since, period.until, workflow=name).get(name),
        lambda: stored.backlog(engine).get(name),
    )
    for one_day in day_rows:
        daily.setdefault(one_day.day, Figures()).add_day(one_day)
    for group in group_rows:
        total.add(group)
        versions.setdefault(group.prompt_version, Figures()).add(group)
        models.setdefault(group.model_served or NO_MODEL, Figures()).add(group)
    for (_, day, version, model), histogram in found.items():
        total.totals.histogram.update(histogram)
        for figures in (daily.get(day), versions.get(version), models.get(model or NO_MODEL)):
            if figures is not None:
                figures.totals.histogram.update(histogram)
    wf = workflows.get(name)
    return {
        "workflow": name,
        "defined": wf is not None,
        "pinned_model": wf.model.model if wf is not None else None,
        "prompt_version": wf.version.id if wf is not None else None,
        "range": period.as_dict(),
        "figures": total.as_dict(),
        "days": day_series(period.days, daily, latency=True),
        "prompt_versions": _breakdown(versions, "prompt_version"),
        "models": _breakdown(models, "model"),
        "review": {
            **backlog_figures(backlog, now),
            "in_range": decision_figures(decided),
        },
        "guards": guard_figures(engine, wf) if wf is not None else None,
    }


_BREAKDOWN_KEYS = (
    "calls",
    "cost_usd",
    "unpriced_calls",
    "error_rate",
    "fallback_rate",
    "latency_p50_ms",
    "latency_p95_ms",
)


def _breakdown(found: Mapping[str, Figures], key: str) -> list[dict[str, Any]]:
    """One row per version or model, the most called first."""
    rows = []
    for value, figures in found.items():
        row = figures.as_dict()
        rows.append({key: value, **{name: row[name] for name in _BREAKDOWN_KEYS}})
    return sorted(rows, key=lambda row: (-row["calls"], row[key]))
