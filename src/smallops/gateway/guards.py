"""The guards in front of each gateway request: the key's and the route's rate limits and
budgets, and a circuit breaker per upstream model, the same stores workflows use.

Rate limits and breakers live in memory, or in Redis when SMALLOPS_REDIS_URL is set (shared by
every worker and instance); budgets are reserved in the log database, so they hold across
instances always. While Redis does not answer, each process keeps its own limits and breakers,
and the runs say so (a `degraded` decision), as workflows' do. Whatever blocks (Redis, the
database) runs in a worker thread, never in the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any

from smallops.gateway.errors import budget_exhausted, budget_unavailable, rate_limited
from smallops.gateway.keys import KeyInfo
from smallops.gateway_config import Route, WorkflowRoute
from smallops.pricing import price_run
from smallops.providers.base import ProviderError
from smallops.records import Pricing, Usage
from smallops.resilience.breaker import BreakerConfig, BreakerStore, breaker_store
from smallops.resilience.budget import Budget, BudgetLedger, Reservation
from smallops.resilience.guards import EventLog, breaker_failure
from smallops.resilience.ratelimit import RateLimit, parse_limits
from smallops.resilience.steps import note_degraded
from smallops.storage.db import Engine

DEFAULT_OUTPUT_TOKENS = 1024  # what a request that sets no max_tokens is reserved for
#: The most output a request is reserved for: beyond any model's (the upstream refuses more),
#: and small enough to price as a float.
MOST_OUTPUT_TOKENS = 10**9
Held = list[tuple[BudgetLedger, Reservation]]


@dataclass(frozen=True)
class Target:
    """One model a route may send to: its breaker key and how it is priced."""

    route: Route
    model: str
    endpoint: str
    pricing: Pricing

    @property
    def breaker_key(self) -> str:
        """One breaker per upstream model, whichever routes send to it: an outage seen
        through one route spares the others' requests too."""
        return f"gateway|{self.endpoint}|{self.model}"


class GatewayGuards:
    """Every route's and key's guards, made on first use and kept for the process."""

    def __init__(self, engine: Callable[[], Engine], database: str, redis_url: str | None) -> None:
        self._engine = engine
        self._database = database
        self._redis_url = redis_url
        self._limits: dict[tuple[str, tuple[str, ...]], RateLimit] = {}
        self._ledgers: dict[tuple[str, float | None, float | None], BudgetLedger] = {}
        self._events: dict[str, EventLog] = {}
        self._reported: set[str] = set()  # budgets reported near or at their cap, per period
        self.breakers: BreakerStore = breaker_store(redis_url)
        self.breaker_config = BreakerConfig()

    async def admit(
        self,
        key: KeyInfo,
        route: Route | WorkflowRoute,
        body: bytes,
        request: dict[str, Any],
        pricing: Pricing,
        model: str,
        decisions: list[dict[str, Any]],
    ) -> Held:
        """Take room under the rate limits and reserve the budgets; GatewayError when refused
        (what was reserved before the refusal is given back)."""
        for name, rates in self._rates(key, route):
            limit = self._limit(name, rates)
            wait = await self._blocking(limit.needs_io, partial(limit.acquire, 1))
            note_degraded(decisions, limit.degraded())
            if wait > 0:
                decisions.append({"guard": "rate_limit", "decision": "refused", "limit": name})
                raise rate_limited(
                    f"rate limit of {_whose(name)} reached ({', '.join(rates)})", wait
                )
        held: Held = []
        cost = _estimate(body, request, pricing, model)
        for name, budget in self._budgets(key, route):
            ledger = self._ledger(name, budget)
            reservation = await asyncio.to_thread(ledger.reserve, cost)
            if reservation.refused:
                self.release(held)
                kind = "unavailable" if reservation.unavailable else "refused"
                decisions.append({"guard": "budget", "decision": kind, "budget": name})
                if reservation.unavailable:
                    raise budget_unavailable(reservation.refused)
                self._report_once(route, name, "exhausted", reservation.refused)
                raise budget_exhausted(f"{_whose(name)}: {reservation.refused}")
            decisions.append(
                {"guard": "budget", "decision": "reserved", "budget": name, "usd": round(cost, 6)}
            )
            held.append((ledger, reservation))
            for warning in reservation.warnings:  # 80% of a cap crossed
                self._report_once(route, name, "warning", warning)
        return held

    def settle(self, held: Held, target: Target | None, served: str | None, usage: Usage) -> None:
        """Replace the reservations by the real cost, off the request path."""
        if not held:
            return
        actual = 0.0
        if target is not None:
            actual = price_run(target.pricing, served or target.model, usage)[0] or 0.0
        for ledger, reservation in held:
            asyncio.get_running_loop().run_in_executor(None, ledger.settle, reservation, actual)

    def release(self, held: Held, usd: float = 0.0) -> None:
        """Replace the reservations by `usd` (nothing spent, by default), off the request path."""
        for ledger, reservation in held:
            asyncio.get_running_loop().run_in_executor(None, ledger.settle, reservation, usd)

    async def allow(self, target: Target, decisions: list[dict[str, Any]]) -> bool:
        """Before each attempt: whether it is a probe; ProviderError("breaker_open") if open."""
        store, config, key = self.breakers, self.breaker_config, target.breaker_key
        state, change = await self._blocking(store.needs_io, lambda: store.allow(key, config))
        note_degraded(decisions, store.degraded())
        if change is not None:
            self._transition(target, change)
        if state == "open":
            decisions.append({"guard": "breaker", "decision": "open", "key": key})
            raise ProviderError("breaker_open", f"the circuit breaker for {key} is open")
        if state == "probe":
            decisions.append({"guard": "breaker", "decision": "probe", "key": key})
        return bool(state == "probe")

    async def record(
        self, target: Target, probe: bool, error: ProviderError | None, time_left: float
    ) -> None:
        """After each attempt: its outcome, as the breaker judges it."""
        store, config, key = self.breakers, self.breaker_config, target.breaker_key
        ok = not breaker_failure(error, time_left)
        change = await self._blocking(store.needs_io, lambda: store.record(key, config, ok, probe))
        if change is not None:
            self._transition(target, change)

    def _report_once(
        self, route: Route | WorkflowRoute, name: str, after: str, reason: str
    ) -> None:
        """A budget's warning (80% of a cap crossed) or exhaustion, as workflows report them,
        in the route's guard events: once per period and process, not once per request (each
        reservation whose estimate crosses 80% while the real costs stay under it warns again,
        and a client retrying against a spent budget would write an event a request)."""
        kind = reason.split(" budget")[0]  # daily or monthly
        now = datetime.now(timezone.utc)
        when = f"{now:%Y-%m}" if kind == "monthly" else f"{now:%Y-%m-%d}"
        period = f"{name}|{after}|{kind}|{when}"
        if period not in self._reported:
            self._reported.add(period)
            self._event_log(route.workflow).record("budget", name, None, after, reason)

    def _transition(self, target: Target, change: Any) -> None:
        self._event_log(target.route.workflow).record(
            "breaker", change.key, change.before, change.after, change.reason
        )

    @staticmethod
    def _rates(key: KeyInfo, route: Route | WorkflowRoute) -> list[tuple[str, tuple[str, ...]]]:
        rates: list[tuple[str, tuple[str, ...]]] = []
        if key.rpm is not None:
            rates.append((f"gateway-key:{key.name}", (f"{key.rpm}/minute",)))
        if route.rate_limit:
            rates.append((route.workflow, route.rate_limit))
        return rates

    @staticmethod
    def _budgets(key: KeyInfo, route: Route | WorkflowRoute) -> list[tuple[str, Budget]]:
        budgets = []
        if key.daily_usd is not None:
            budgets.append((f"gateway-key:{key.name}", Budget(daily=key.daily_usd)))
        if route.daily_usd is not None or route.monthly_usd is not None:
            budgets.append((route.workflow, Budget(route.daily_usd, route.monthly_usd)))
        return budgets

    def _limit(self, name: str, rates: tuple[str, ...]) -> RateLimit:
        found = self._limits.get((name, rates))
        if found is None:
            requests = parse_limits(list(rates), "rate_limit", name)
            found = RateLimit(name, requests, [], self._redis_url, wait=0.0)
            self._limits[(name, rates)] = found
        return found

    def _ledger(self, name: str, budget: Budget) -> BudgetLedger:
        index = (name, budget.daily, budget.monthly)
        found = self._ledgers.get(index)
        if found is None:
            found = BudgetLedger(self._engine, name, budget, self._database)
            self._ledgers[index] = found
        return found

    def _event_log(self, workflow: str) -> EventLog:
        found = self._events.get(workflow)
        if found is None:
            found = self._events[workflow] = EventLog(self._engine, workflow)
        return found

    @staticmethod
    async def _blocking(needs_io: bool, work: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(work) if needs_io else work()


def _whose(name: str) -> str:
    if name.startswith("gateway-key:"):
        return f"key {name.removeprefix('gateway-key:')!r}"
    return f"route {name.removeprefix('gateway:')!r}"


def _estimate(body: bytes, request: dict[str, Any], pricing: Pricing, model: str) -> float:
    """The most a request may cost: its body as prompt (about 3 bytes a token, generously),
    and its max_tokens of answer."""
    answer = request.get("max_completion_tokens") or request.get("max_tokens")
    if not isinstance(answer, int) or isinstance(answer, bool) or answer <= 0:
        answer = DEFAULT_OUTPUT_TOKENS
    usage = Usage(input_tokens=len(body) // 3 + 16, output_tokens=min(answer, MOST_OUTPUT_TOKENS))
    return price_run(pricing, model, usage)[0] or 0.0
