"""A workflow's budget and circuit breaker as a dashboard shows them, from `guard_status`.

The guards come from the workflow's call plan (as `smallops status` gets them). Building the
plan in the web server makes no call and starts no thread: it resolves the provider's request,
the log writer (idle until a run is written) and the guards' stores (Redis clients connect on
first use). A breaker kept in memory is this server's own, which makes no model calls: the page
says so rather than show it as the workers' state. The refused calls are counted from the
rollups, not read here from the runs; a budget reads the runs only for a period nobody has
spent in yet (its first call writes the period's row).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smallops.errors import SmallopsError
from smallops.resilience.status import Source, guard_status

if TYPE_CHECKING:
    from smallops.storage.db import Engine
    from smallops.workflow import Workflow

#: What a breaker's state is, by where it is kept.
SOURCES: dict[Source, str] = {
    "shared": "shared through Redis: what every process calling the model sees",
    "process": (
        "this server's own breaker, which calls no model: workers keep theirs in memory "
        "(set SMALLOPS_REDIS_URL to share it and see it here)"
    ),
    "fallback": (
        "Redis does not answer: this is this server's fallback, the shared state is unknown"
    ),
}


def guard_figures(engine: Engine, wf: Workflow[Any]) -> dict[str, Any]:
    """Budget used per period and the breaker's state, with whose state it is."""
    try:
        guards = wf.plan().guards
        if guards is None:
            return {"budget": [], "breaker": None, "degraded": [], "problem": None}
        found = guard_status(engine, wf.name, guards, refusals=False)
    except SmallopsError as exc:  # e.g. a Redis URL that cannot be used
        return {"budget": [], "breaker": None, "degraded": [], "problem": exc.message}
    breaker = None
    if found.breaker is not None:
        source: Source = found.breaker["source"]
        breaker = {
            "state": found.breaker["state"],
            "failures": found.breaker["failures"],
            "calls": found.breaker["calls"],
            "source": source,
            "source_text": SOURCES[source],
        }
    return {
        "budget": found.budget,
        "breaker": breaker,
        "degraded": [{"guard": d.get("guard"), "reason": d.get("reason")} for d in found.degraded],
        "problem": None,
    }
