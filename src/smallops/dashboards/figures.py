"""The figures every dashboard shows for a set of production calls, added up from rollup groups.

Calls and cost count every production call, the secondary model's included (it is paid for).
Rates are over the calls to the pinned model's route (origin app): a call that fell back to the
secondary model is one call that failed there, not two. Unpriced calls are counted, and a cost
is None (never $0) when none of the calls was priced.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from smallops.error_types import REFUSALS
from smallops.kinds import RunStatus
from smallops.storage.dashboard_figures import DayTotals, Group
from smallops.storage.rollups import Totals

#: Statuses of a call on the pinned route whose work went to the workflow's fallback: a human,
#: the default value, or the secondary model.
FALLBACK_STATUSES: frozenset[RunStatus] = frozenset(
    {"queued_for_human", "fallback_default", "fallback_secondary"}
)
#: The model declined to answer (a guard's refusals are counted apart: REFUSALS).
MODEL_REFUSAL = "refused"


@dataclass
class Figures:
    """Production calls of one workflow over some time, as the dashboards report them."""

    totals: Totals = field(default_factory=Totals)
    primary: int = 0  # calls to the pinned model's route (origin app)
    errors: int = 0  # of those, the calls that ended with an error type
    refused: int = 0  # ... the model refused
    guard_refused: int = 0  # ... a guard refused before any request (throttle, breaker, budget)
    fallbacks: int = 0  # ... the fallback did the work
    mismatches: int = 0  # ... a model other than the pinned one answered
    served: Counter[str] = field(default_factory=Counter)  # the pinned route's served models
    pinned: Counter[str] = field(default_factory=Counter)  # the pinned route's requested models

    def add(self, group: Group) -> None:
        calls = group.totals.calls
        self.totals.add(group.totals)
        if group.origin == "fallback":
            return
        self.primary += calls
        self.mismatches += group.totals.model_mismatches
        self.pinned[group.model_requested] += calls
        if group.model_served:
            self.served[group.model_served] += calls
        if group.error_type:
            self.errors += calls
        if group.error_type == MODEL_REFUSAL:
            self.refused += calls
        if group.error_type in REFUSALS:
            self.guard_refused += calls
        if group.status in FALLBACK_STATUSES:
            self.fallbacks += calls

    def add_day(self, day: DayTotals) -> None:
        """A day's totals: calls, cost and errors only (what a daily chart shows)."""
        self.totals.calls += day.calls
        self.totals.priced_calls += day.priced_calls
        self.totals.cost_usd += day.cost_usd
        self.primary += day.primary
        self.errors += day.errors

    @property
    def cost_usd(self) -> float | None:
        """What the priced calls cost; None if some calls were made and none was priced."""
        if self.totals.priced_calls == 0:
            return None if self.totals.calls else 0.0
        return self.totals.cost_usd

    @property
    def unpriced(self) -> int:
        return self.totals.calls - self.totals.priced_calls

    def rate(self, count: int) -> float | None:
        return count / self.primary if self.primary else None

    def as_dict(self) -> dict[str, Any]:
        """The figures as the pages show them and answer them as JSON."""
        p50, p95 = self.totals.percentile(50), self.totals.percentile(95)
        return {
            "calls": self.totals.calls,
            "cost_usd": _round(self.cost_usd, 6),
            "priced_calls": self.totals.priced_calls,
            "unpriced_calls": self.unpriced,
            "input_tokens": self.totals.input_tokens,
            "output_tokens": self.totals.output_tokens,
            "latency_p50_ms": _round(p50, 1),
            "latency_p95_ms": _round(p95, 1),
            "pinned_route_calls": self.primary,
            "errors": self.errors,
            "error_rate": _round(self.rate(self.errors), 4),
            "refusals": self.refused,
            "refusal_rate": _round(self.rate(self.refused), 4),
            "guard_refusals": self.guard_refused,
            "guard_refusal_rate": _round(self.rate(self.guard_refused), 4),
            "fallbacks": self.fallbacks,
            "fallback_rate": _round(self.rate(self.fallbacks), 4),
            "model_mismatches": self.mismatches,
            "models_served": dict(self.served.most_common()),
            "models_pinned": dict(self.pinned.most_common()),
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def change(now: float | None, before: float | None) -> float | None:
    """The change from `before` to `now` as a fraction (0.25 is +25%); None when either is
    unknown or there was nothing before to compare with."""
    if now is None or before is None or before == 0:
        return None
    return round((now - before) / before, 4)
