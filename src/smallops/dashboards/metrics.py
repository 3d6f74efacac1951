"""The figures `/metrics` exposes, read at scrape time from the rollups and the current state.

Nothing is counted in this process: every server (and every scrape) reads the same database, so
two instances behind a load balancer report the same numbers. Counters are the rollups' all-time
sums of production calls (eval traffic left out, as the dashboards do); gauges are the review
queue, the guards and the open alerts as they stand now.

A scrape must stay cheap on a big log: the all-time sums of the rollups are kept in memory for
the hours older than a day (`AllTimeProduction`), read again every ten minutes, and each scrape
adds the recent hours to them. A run logged late into an older hour (a spool replayed after an
outage) shows within those ten minutes.

Label values are bounded: workflows are those the project defines or the log holds, models are
the ones the workflows pin (a served model that is not pinned counts as OTHER_MODEL), periods
and token types are closed sets.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from smallops.dashboards.guards import guard_figures
from smallops.storage import alert_log
from smallops.storage import dashboard_figures as stored
from smallops.storage.rollup_reads import HourRows, Production, hour_rows, production_of
from smallops.storage.rollups import BUCKETS_PER_DOUBLING, ZERO_BUCKET

if TYPE_CHECKING:
    from smallops.storage.db import Engine
    from smallops.workflow import Workflow

#: The label of a served model that none of the workflow's configured models pins.
OTHER_MODEL = "other"
#: The histogram's upper bounds, in milliseconds: every doubling from 1 ms to 2^19 ms (8.7
#: minutes). Each is an edge of the rollups' log buckets, so the cumulative counts are exact
#: (a latency exactly on an edge counts in the bucket above it).
_DOUBLINGS = range(20)
DURATION_EDGES_MS = tuple(2**k for k in _DOUBLINGS)
#: An alert counts as firing while its condition holds: firing, or acknowledged by someone.
FIRING_STATES = ("firing", "acknowledged")
#: A budget period key ("day:2026-12-01") as a label that does not change every day.
PERIOD_KINDS = {"day": "daily", "month": "monthly"}


@dataclass
class WorkflowMetrics:
    """One workflow's figures."""

    production: Production = field(default_factory=Production)
    pinned: frozenset[str] = frozenset()
    pending_reviews: int = 0
    oldest_pending_age_s: float = 0.0
    breaker_open: bool | None = None  # None: no breaker whose state this server can see
    budget_used: dict[str, float] = field(default_factory=dict)  # period kind -> spent / cap

    def model_runs(self) -> Counter[str]:
        """Production runs per model that served them: a pinned model's name, or OTHER_MODEL."""
        found: Counter[str] = Counter()
        for served in (self.production.served, self.production.fallback_served):
            for model, calls in served.items():
                found[model if model in self.pinned else OTHER_MODEL] += calls
        return found

    def duration_buckets(self) -> list[tuple[float, int]]:
        """(upper bound in seconds, runs at or below it), cumulative, ending with +Inf."""
        return duration_buckets(self.production.totals.histogram)


@dataclass
class MetricFigures:
    workflows: dict[str, WorkflowMetrics]
    #: Open alerts whose condition holds, per (workflow, rule); '' for a project-wide rule.
    alerts_firing: Counter[tuple[str, str]]


#: Rollup hours at least this old are "settled": summed once and kept, since they rarely change.
SETTLED_AFTER = timedelta(hours=24)
REREAD_SETTLED_SECONDS = 600.0  # ... and summed again this often, for runs logged late


class AllTimeProduction:
    """The all-time production figures of one log, cheap to read again: the settled hours'
    sums from memory (refreshed every REREAD_SETTLED_SECONDS), the recent hours from the
    database at each call."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._settled: tuple[HourRows, datetime] | None = None  # and where those hours end
        self._read_at = 0.0

    def __call__(self, now: datetime | None = None) -> dict[str, Production]:
        now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        with self._lock:
            if self._settled is None or time.monotonic() - self._read_at > REREAD_SETTLED_SECONDS:
                until = (now - SETTLED_AFTER).replace(minute=0, second=0, microsecond=0)
                with self.engine.connect() as connection:
                    self._settled = (hour_rows(connection, until=until), until)
                self._read_at = time.monotonic()
            settled, until = self._settled
        with self.engine.connect() as connection:
            recent = hour_rows(connection, since=until)
        return production_of(settled, recent)


def metric_figures(
    engine: Engine,
    workflows: Mapping[str, Workflow[Any]],
    now: datetime | None = None,
    all_time: AllTimeProduction | None = None,
) -> MetricFigures:
    """Every workflow the project defines or the log holds, with its figures, and the alerts."""
    now = now or datetime.now(timezone.utc)
    calls = (all_time or AllTimeProduction(engine))(now)
    backlog = stored.backlog(engine)
    names = sorted(set(workflows) | set(calls) | set(backlog))
    out: dict[str, WorkflowMetrics] = {}
    for name in names:
        found = WorkflowMetrics(production=calls.get(name) or Production())
        wf = workflows.get(name)
        if wf is not None:
            found.pinned = pinned_models(wf)
            _guards(found, guard_figures(engine, wf))
        waiting = backlog.get(name)
        if waiting is not None and waiting.pending:
            found.pending_reviews = waiting.pending
            if waiting.oldest is not None:
                found.oldest_pending_age_s = max(0.0, (now - waiting.oldest).total_seconds())
        out[name] = found
    firing: Counter[tuple[str, str]] = Counter()
    for (workflow, rule, state), n in alert_log.open_alert_counts(engine).items():
        if state in FIRING_STATES:
            firing[(workflow, rule)] += n
    return MetricFigures(out, firing)


def pinned_models(wf: Workflow[Any]) -> frozenset[str]:
    """The models a workflow's configuration names: its own and its secondary's."""
    models = {wf.model.model}
    if wf.secondary is not None:
        models.add(wf.secondary.model.model)
    return frozenset(models)


def _guards(found: WorkflowMetrics, guards: Mapping[str, Any]) -> None:
    """The breaker only when it is shared through Redis: a breaker this server keeps in memory
    is its own (it calls no model), not the workers', and saying it is closed would mislead."""
    breaker = guards.get("breaker")
    if breaker is not None and breaker["source"] == "shared":
        found.breaker_open = breaker["state"] != "closed"
    for row in guards.get("budget") or []:
        kind = PERIOD_KINDS.get(str(row["period"]).partition(":")[0])
        if kind is not None and row.get("cap_usd"):
            found.budget_used[kind] = float(row["spent_usd"]) / float(row["cap_usd"])


def duration_buckets(histogram: Mapping[int, int]) -> list[tuple[float, int]]:
    """The rollups' log-bucketed latencies as cumulative Prometheus buckets: for each edge of
    DURATION_EDGES_MS (in seconds), the runs in buckets wholly below it, then +Inf with all."""
    out = []
    ordered = sorted(histogram.items())
    for k in _DOUBLINGS:
        # bucket b spans [2^(b/8), 2^((b+1)/8)) ms: wholly below 2^k ms when b < 8k
        limit = BUCKETS_PER_DOUBLING * k
        below = sum(n for bucket, n in ordered if bucket == ZERO_BUCKET or bucket < limit)
        out.append((2**k / 1000, below))
    out.append((float("inf"), sum(histogram.values())))
    return out
