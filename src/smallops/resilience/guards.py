"""The guards in front of a workflow's calls: budget, rate limit, circuit breaker.

A guard that refuses does not raise at the application: the call goes to the workflow's
fallback with the reason recorded on the run. Breaker transitions and budget warnings are also
written to `guard_events` (off the request path) and logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from smallops.error_types import REFUSALS as REFUSALS  # what `smallops logs --status` lists
from smallops.error_types import RETRYABLE
from smallops.ids import uuid7
from smallops.pricing import price_run
from smallops.providers.base import ProviderError
from smallops.records import Usage
from smallops.storage.guard_log import record_guard_event

if TYPE_CHECKING:
    from smallops.records import Pricing
    from smallops.resilience.breaker import BreakerConfig, BreakerStore, Transition
    from smallops.resilience.budget import BudgetLedger
    from smallops.resilience.ratelimit import RateLimit
    from smallops.storage.db import Engine

log = logging.getLogger("smallops")
#: Provider failures that say the endpoint is unwell (a 429 is judged by `breaker_failure`).
UNHEALTHY = RETRYABLE - {"rate_limited"}


def breaker_failure(error: ProviderError | None, time_left: float) -> bool:
    """Whether an attempt's outcome counts against the circuit breaker; decided only here.

    Server errors, timeouts, dropped connections and malformed bodies say the endpoint is
    unwell. A 429 whose Retry-After the call can wait out within its deadline is the server
    managing its load, not an outage: like a bad request, it shows the endpoint is up. A 429
    with no Retry-After, or one past the deadline, counts as a failure. Guard refusals
    (REFUSALS) and calls without a key (UNSENDABLE) never reach the endpoint and are not
    counted at all; a 401 that a rotated key answers is retried within its attempt, unseen.
    """
    if error is None:
        return False
    if error.kind == "rate_limited":
        return error.retry_after is None or error.retry_after >= time_left
    return error.kind in UNHEALTHY


class EventLog:
    """Guard events into the log database, each in a short background thread (they are rare)."""

    def __init__(self, engine: Callable[[], Engine], workflow: str) -> None:
        self._engine = engine
        self.workflow = workflow

    def record(self, guard: str, key: str, before: str | None, after: str, reason: str) -> None:
        log.warning(
            "smallops: %s %s %s: %s -> %s (%s)", self.workflow, guard, key, before, after, reason
        )
        row = {
            "id": uuid7(),
            "workflow": self.workflow,
            "guard": guard,
            "key": key,
            "before": before,
            "after": after,
            "reason": reason,
            "at": datetime.now(timezone.utc),
        }
        threading.Thread(target=self._write, args=(row,), daemon=True).start()

    def _write(self, row: dict[str, Any]) -> None:
        try:
            record_guard_event(self._engine(), row)
        except Exception as exc:  # the database may be down; the warning above was logged
            log.warning("smallops: could not record a guard event: %s", exc)


@dataclass
class Guards:
    """One workflow's guards (each may be None) and what they need to estimate a call."""

    workflow: str
    rate: RateLimit | None
    breaker: BreakerStore | None
    breaker_key: str
    breaker_config: BreakerConfig | None
    budget: BudgetLedger | None
    events: EventLog
    pricing: Pricing
    model: str
    max_output_tokens: int
    _exhausted: set[str] = field(default_factory=set)

    @property
    def active(self) -> bool:
        return self.rate is not None or self.breaker is not None or self.budget is not None

    def estimate(self, messages: list[dict[str, str]]) -> tuple[int, float]:
        """(tokens, USD) a call may use at most: its prompt, and max_tokens of answer."""
        prompt = sum(len(m["content"]) for m in messages) // 3 + 16
        usage = Usage(input_tokens=prompt, output_tokens=self.max_output_tokens)
        cost, _ = price_run(self.pricing, self.model, usage)
        return prompt + self.max_output_tokens, cost or 0.0

    def transition(self, change: Transition) -> None:
        self.events.record("breaker", change.key, change.before, change.after, change.reason)

    def budget_exhausted(self, reason: str) -> None:
        """Report a cap reached once per period and process, not once per refused call."""
        period = reason.split(" budget")[0] + datetime.now(timezone.utc).strftime(":%Y-%m-%d")
        if period not in self._exhausted:
            self._exhausted.add(period)
            self.events.record("budget", self.workflow, None, "exhausted", reason)

    def settle_later(self, reservation: Any, usage: Usage, served: Any) -> None:
        """Replace a call's budget reservation by its real cost, off the request path."""
        if self.budget is None or reservation is None:
            return
        model = served.model if served is not None and served.model else self.model
        actual, _ = price_run(self.pricing, model, usage)
        _settler().submit(self.budget.settle, reservation, actual)

    def budget_release(self, reservation: Any) -> None:
        """Give back a reservation for a call that was not made."""
        if self.budget is not None and reservation is not None:
            _settler().submit(self.budget.settle, reservation, 0.0)


_pool: ThreadPoolExecutor | None = None


def _settler() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smallops-budget")
    return _pool
