"""The guards' steps in a call's lifecycle: admit (budget, rate limit), and the breaker."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from smallops._effects import Effect, Sleep, io
from smallops.error_types import UNSENDABLE
from smallops.providers.base import ProviderError
from smallops.resilience.guards import Guards, breaker_failure


def admit(
    guards: Guards, messages: list[dict[str, str]], decisions: list[dict[str, Any]]
) -> Generator[Effect, Any, Any]:
    """Reserve the budget and take room under the rate limit: the reservation, or a refusal
    as (error type, message) for the fallback."""
    tokens, cost = guards.estimate(messages)
    reservation = None
    if guards.budget is not None:
        ledger = guards.budget
        reservation = yield from io(ledger.needs_io, lambda: ledger.reserve(cost))
        for warning in reservation.warnings:
            guards.events.record("budget", guards.workflow, None, "warning", warning)
        if reservation.unavailable:  # fail closed: what was spent cannot be known
            decisions.append(
                {"guard": "budget", "decision": "unavailable", "reason": reservation.refused}
            )
            return ("budget_unavailable", reservation.refused)
        if reservation.refused:
            guards.budget_exhausted(reservation.refused)
            decisions.append(
                {"guard": "budget", "decision": "refused", "reason": reservation.refused}
            )
            return ("budget_exhausted", reservation.refused)
        decisions.append({"guard": "budget", "decision": "reserved", "usd": round(cost, 6)})
    if guards.rate is not None:
        limit = guards.rate
        waited = 0.0
        while (wait := (yield from io(limit.needs_io, lambda: limit.acquire(tokens)))) > 0:
            if waited + wait > limit.wait:
                decisions.append(
                    {"guard": "rate_limit", "decision": "refused", "waited_s": round(waited, 3)}
                )
                guards.budget_release(reservation)
                return ("throttled", f"rate limit reached; no room within {limit.wait:g} s")
            yield Sleep(wait)
            waited += wait
        if waited:
            decisions.append(
                {"guard": "rate_limit", "decision": "waited", "waited_s": round(waited, 3)}
            )
        note_degraded(decisions, limit.degraded())
    return reservation


def breaker_allow(guards: Guards, decisions: list[dict[str, Any]]) -> Generator[Effect, Any, bool]:
    """Before each attempt: whether it is a probe; ProviderError("breaker_open") when open."""
    store, config = guards.breaker, guards.breaker_config
    if store is None or config is None:
        return False
    state, change = yield from io(store.needs_io, lambda: store.allow(guards.breaker_key, config))
    note_degraded(decisions, store.degraded())
    if change is not None:
        guards.transition(change)
    if state == "open":
        decisions.append({"guard": "breaker", "decision": "open", "key": guards.breaker_key})
        raise ProviderError("breaker_open", f"the circuit breaker for {guards.breaker_key} is open")
    if state == "probe":
        decisions.append({"guard": "breaker", "decision": "probe", "key": guards.breaker_key})
    return bool(state == "probe")


def breaker_record(
    guards: Guards,
    probe: bool,
    error: ProviderError | None,
    time_left: float,
    decisions: list[dict[str, Any]],
) -> Generator[Effect, Any, None]:
    """After each attempt: count its outcome, as `breaker_failure` judges it. An attempt
    that could not be sent (its key unavailable) says nothing of the endpoint: not counted."""
    store, config = guards.breaker, guards.breaker_config
    if store is None or config is None or (error is not None and error.kind in UNSENDABLE):
        return
    ok = not breaker_failure(error, time_left)
    change = yield from io(
        store.needs_io, lambda: store.record(guards.breaker_key, config, ok, probe)
    )
    note_degraded(decisions, store.degraded())
    if change is not None:
        guards.transition(change)


def note_degraded(decisions: list[dict[str, Any]], degraded: dict[str, Any] | None) -> None:
    """Record on the run, once per guard, that the guard's shared store did not answer."""
    if degraded is None:
        return
    if not any(d["guard"] == degraded["guard"] and d["decision"] == "degraded" for d in decisions):
        decisions.append(degraded)
