"""The Prometheus collector: `metric_figures` as metric families, read afresh at each scrape.

Imported only when a server answers /metrics, so `smallops` commands never load
prometheus_client. Each app has a registry of its own (never the process-wide default), holding
this collector alone: no in-process counters, no Python process metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from smallops.dashboards.metrics import AllTimeProduction, MetricFigures, metric_figures
from smallops.kinds import STATUSES

if TYPE_CHECKING:
    from smallops.storage.db import Engine
    from smallops.workflow import Workflow

TOKEN_TYPES = ("input", "output", "cached")


class SmallopsCollector(Collector):
    """The project's figures from its log database, as of the scrape."""

    def __init__(self, read: Callable[[], MetricFigures]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return families(self.read())


def families(figures: MetricFigures) -> list[Metric]:
    """Every metric /metrics exposes, with its samples."""
    wl = ["workflow"]
    runs = CounterMetricFamily(
        "smallops_runs", "Production runs, by workflow and final status.", labels=[*wl, "status"]
    )
    errors = CounterMetricFamily(
        "smallops_errors",
        "Production runs that ended with an error type, by workflow and type.",
        labels=[*wl, "error_type"],
    )
    cost = CounterMetricFamily(
        "smallops_cost_usd",
        "Cost of the priced production runs in US dollars (unpriced runs are not counted as $0).",
        labels=wl,
        unit="usd",
    )
    unpriced = CounterMetricFamily(
        "smallops_unpriced_runs",
        "Production runs whose cost is unknown (a model without a price).",
        labels=wl,
    )
    tokens = CounterMetricFamily(
        "smallops_tokens",
        "Tokens of production runs, by workflow and type (input, output, cached).",
        labels=[*wl, "type"],
    )
    models = CounterMetricFamily(
        "smallops_model_runs",
        'Production runs by the model that served them: a pinned model, or "other".',
        labels=[*wl, "model"],
    )
    mismatches = CounterMetricFamily(
        "smallops_model_mismatches",
        "Production runs served by another model than the one requested.",
        labels=wl,
    )
    duration = HistogramMetricFamily(
        "smallops_run_duration_seconds",
        "Production run duration, from the log's latency histogram.",
        labels=wl,
        unit="seconds",
    )
    queue = GaugeMetricFamily(
        "smallops_review_queue_items", "Review items waiting for a decision.", labels=wl
    )
    oldest = GaugeMetricFamily(
        "smallops_review_oldest_pending_age_seconds",
        "Age of the oldest review item waiting (0 when none waits).",
        labels=wl,
        unit="seconds",
    )
    breaker = GaugeMetricFamily(
        "smallops_breaker_open",
        "1 while the workflow's shared circuit breaker is open or half-open, else 0.",
        labels=wl,
    )
    budget = GaugeMetricFamily(
        "smallops_budget_used_ratio",
        "Share of the budget cap spent in the current period (1 is the cap).",
        labels=[*wl, "period"],
        unit="ratio",
    )
    alerts = GaugeMetricFamily(
        "smallops_alerts_firing",
        "Open alerts whose condition holds (firing or acknowledged), by workflow and rule.",
        labels=[*wl, "rule"],
    )
    for name, found in figures.workflows.items():
        calls = found.production
        totals = calls.totals
        for status in sorted(set(STATUSES) | set(calls.statuses)):
            runs.add_metric([name, status], calls.statuses[status])
        for error, n in sorted(calls.errors.items()):
            errors.add_metric([name, error], n)
        cost.add_metric([name], totals.cost_usd)
        unpriced.add_metric([name], totals.calls - totals.priced_calls)
        counts = (totals.input_tokens, totals.output_tokens, totals.cached_tokens)
        for kind, n in zip(TOKEN_TYPES, counts, strict=True):
            tokens.add_metric([name, kind], n)
        for model, n in sorted(found.model_runs().items()):
            models.add_metric([name, model], n)
        mismatches.add_metric([name], totals.model_mismatches)
        buckets = [(_le(bound), n) for bound, n in found.duration_buckets()]
        duration.add_metric([name], buckets, totals.latency_sum_ms / 1000)
        queue.add_metric([name], found.pending_reviews)
        oldest.add_metric([name], found.oldest_pending_age_s)
        if found.breaker_open is not None:
            breaker.add_metric([name], 1 if found.breaker_open else 0)
        for period, used in sorted(found.budget_used.items()):
            budget.add_metric([name, period], used)
    for (workflow, rule), n in sorted(figures.alerts_firing.items()):
        alerts.add_metric([workflow, rule], n)
    return [
        runs,
        errors,
        cost,
        unpriced,
        tokens,
        models,
        mismatches,
        duration,
        queue,
        oldest,
        breaker,
        budget,
        alerts,
    ]


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def new_registry(engine: Engine, workflows: Mapping[str, Workflow[Any]]) -> CollectorRegistry:
    """A registry of its own holding the collector over this database and these workflows."""
    registry = CollectorRegistry(auto_describe=False)  # registering reads nothing
    all_time = AllTimeProduction(engine)  # the settled hours' sums, kept between scrapes
    registry.register(
        SmallopsCollector(lambda: metric_figures(engine, workflows, all_time=all_time))
    )
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry's samples in the format the scraper asks for (OpenMetrics or text 0.0.4),
    with its content type; this is where the database is read."""
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type
