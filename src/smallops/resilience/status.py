"""How one workflow's guards stand right now: the data behind `smallops status`.

Breakers and rate limits are read from where they live (Redis when shared, else this process);
budgets, refusals and guard events from the log database. A shared store that failed to answer
those reads then reports itself degraded, so degradation is read last.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from smallops.resilience.guards import Guards
from smallops.storage.guard_log import recent_guard_events
from smallops.storage.queries import guard_refusals

if TYPE_CHECKING:
    from smallops.storage.db import Engine

#: How far back the calls a guard refused are counted.
REFUSALS_HOURS = 24
#: How many of the latest guard events are shown.
RECENT_EVENTS = 5

#: Whose state a breaker or rate limit reports: the one shared through Redis, this process's own
#: (no Redis set), or this process's fallback while Redis does not answer.
Source = Literal["shared", "process", "fallback"]


@dataclass(frozen=True)
class GuardStatus:
    """One workflow's guards, as `smallops status --json` prints them."""

    workflow: str
    breaker: dict[str, Any] | None  # state, failures, calls, shared, source; None when off
    rate_limits: list[dict[str, Any]]  # per limit: what is left
    rate_limits_shared: bool
    rate_limits_source: Source
    budget: list[dict[str, Any]]  # per period: spent, cap, share used
    degraded: list[dict[str, Any]]  # the shared stores that do not answer, and why
    refusals: list[dict[str, Any]]  # per error type: calls refused in REFUSALS_HOURS, the last
    recent_events: list[dict[str, Any]]  # the latest RECENT_EVENTS guard events, newest first


def guard_status(
    engine: Engine,
    workflow: str,
    guards: Guards,
    now: datetime | None = None,
    *,
    refusals: bool = True,
) -> GuardStatus:
    """How `workflow`'s guards stand: breaker, rate-limit headroom, budget used, outages of the
    stores they share, the calls they refused lately, and their latest events. Without
    `refusals`, the refused calls (a read of the day's runs) are left out: the dashboards count
    them from the rollups."""
    breaker = None
    if guards.breaker is not None and guards.breaker_config is not None:
        breaker = {
            "shared": guards.breaker.needs_io,
            **guards.breaker.state(guards.breaker_key, guards.breaker_config),
        }
    since = (now or datetime.now(timezone.utc)) - timedelta(hours=REFUSALS_HOURS)
    refused = guard_refusals(engine, workflow, since) if refusals else []
    events = recent_guard_events(engine, workflow, RECENT_EVENTS)
    rate_limits = guards.rate.headroom() if guards.rate is not None else []
    budget = guards.budget.usage() if guards.budget is not None else []
    # After the reads above: a shared store that failed them now says it is degraded.
    degraded = [
        {key: value for key, value in found.items() if key != "decision"}
        for guard in (guards.rate, guards.breaker, guards.budget)
        if guard is not None and (found := guard.degraded()) is not None
    ]
    down = {outage["guard"] for outage in degraded}
    rate_shared = bool(guards.rate is not None and guards.rate.needs_io)
    if breaker is not None:
        breaker["source"] = source(breaker["shared"], "breaker" in down)
    return GuardStatus(
        workflow=workflow,
        breaker=breaker,
        rate_limits=rate_limits,
        rate_limits_shared=rate_shared,
        rate_limits_source=source(rate_shared, "rate_limit" in down),
        budget=budget,
        degraded=degraded,
        refusals=refused,
        recent_events=[
            {"guard": e["guard"], "after": e["after"], "reason": e["reason"], "at": e["at"]}
            for e in events
        ],
    )


def source(shared: bool, down: bool) -> Source:
    """Whose state a guard reports: its shared store's, this process's own, or the fallback's."""
    return "process" if not shared else "fallback" if down else "shared"
