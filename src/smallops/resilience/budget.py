"""Budgets: daily and monthly USD caps per workflow, safe against races between processes.

Before a call, its cost is reserved — priced at its prompt and at the most it may answer
(max_tokens) — with one conditional update per period (`spent + cost <= cap`), which Postgres
row locks and SQLite's write lock make atomic: processes racing for the last dollars cannot
overshoot. After the call the reservation is settled to the real cost. A period's row starts
from the costs already recorded for it. Crossing 80% of a cap is reported once; at the cap,
calls go to the workflow's fallback.

A budget fails closed: when the database does not answer within BUDGET_WAIT seconds (down,
stalled, or locked by another writer), the call goes to the fallback as `budget_unavailable`,
since what was spent cannot be known. A reservation that completes after its call gave up on it
is given back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from smallops.errors import ConfigError
from smallops.resilience.shared import SharedStore
from smallops.storage import guard_log
from smallops.storage.db import write_transaction
from smallops.storage.health import DatabaseError

if TYPE_CHECKING:
    from smallops.storage.db import Connection, Engine

log = logging.getLogger("smallops")
BUDGET_WAIT = 2.0  # seconds a call waits for its reservation before the budget is unavailable


@dataclass(frozen=True)
class Budget:
    """USD caps per workflow; `warn_at` is the share of a cap that triggers the warning."""

    daily: float | None = None
    monthly: float | None = None
    warn_at: float = 0.8

    def __post_init__(self) -> None:
        for cap in (self.daily, self.monthly):
            if cap is not None and cap <= 0:
                raise ConfigError(f"a budget cap must be above 0, got {cap}")


@dataclass
class Reservation:
    """What a call holds while it runs: the amount, per period."""

    amount: float
    periods: list[str] = field(default_factory=list)
    refused: str | None = None  # why not, when the cap is reached or cannot be checked
    warnings: list[str] = field(default_factory=list)
    unavailable: bool = False  # refused because the database did not answer


class BudgetLedger:
    """One workflow's spend against its caps, kept in the log database."""

    needs_io = True

    def __init__(
        self, engine: Callable[[], Engine], workflow: str, budget: Budget, database: str
    ) -> None:
        self._engine = engine
        self.workflow = workflow
        self.budget = budget
        self.store = _database_store(database)

    def periods(self, now: datetime | None = None) -> list[tuple[str, datetime, float]]:
        """(period key, its start, its cap) for each cap."""
        now = now or datetime.now(timezone.utc)
        found = []
        if self.budget.daily is not None:
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            found.append((f"day:{start:%Y-%m-%d}", start, self.budget.daily))
        if self.budget.monthly is not None:
            start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            found.append((f"month:{start:%Y-%m}", start, self.budget.monthly))
        return found

    def reserve(self, amount: float) -> Reservation:
        """Hold `amount` in every period, or in none if any cap would be passed; refused as
        unavailable when the database does not answer in time."""
        return self.store.call(
            lambda: self._reserve_within(amount), lambda: self._unavailable(amount)
        )

    def degraded(self) -> dict[str, Any] | None:
        """The database's outage, as this ledger found it, while it lasts."""
        return self.store.degraded()

    def _reserve_within(self, amount: float) -> Reservation:
        future = _reserver().submit(self._reserve, amount)
        try:
            return future.result(timeout=BUDGET_WAIT)
        except FutureTimeout:  # the same as TimeoutError from Python 3.11 on
            if not future.cancel():  # it is running: give it back if it ever completes
                future.add_done_callback(self._give_back)
            raise TimeoutError(f"no answer within {BUDGET_WAIT:g} s") from None

    def _give_back(self, late: Future[Reservation]) -> None:
        if late.cancelled() or late.exception() is not None:
            return
        try:
            self.settle(late.result(), 0.0)
        except DatabaseError as exc:
            log.warning(
                "smallops: %s: could not give back a late budget reservation: %s",
                self.workflow,
                exc,
            )

    def _unavailable(self, amount: float) -> Reservation:
        why = self.store.reason or "no answer"
        reason = f"the budget cannot be checked: {self.store.where} did not answer ({why})"
        return Reservation(amount, refused=reason, unavailable=True)

    def _reserve(self, amount: float) -> Reservation:
        reservation = Reservation(amount)
        try:
            with write_transaction(self._engine()) as connection:
                self._hold(connection, reservation)
        except _Refused as refused:
            reservation.refused, reservation.periods = str(refused), []
        return reservation

    def _hold(self, connection: Connection, reservation: Reservation) -> None:
        amount = reservation.amount
        for period, start, cap in self.periods():
            spent = self._row(connection, period, start)
            now = datetime.now(timezone.utc)
            held = guard_log.hold_spend(connection, self.workflow, period, amount, cap, now)
            if not held:  # the transaction is rolled back: nothing held anywhere
                kind = _KIND[period.split(":")[0]]
                raise _Refused(
                    f"{kind} budget of ${cap:g} spent (${spent:.4f} used; "
                    f"this call may cost up to ${amount:.4f})"
                )
            reservation.periods.append(period)
            warn = self.budget.warn_at * cap
            if spent < warn <= spent + amount:
                reservation.warnings.append(
                    f"{_KIND[period.split(':')[0]]} budget {100 * self.budget.warn_at:.0f}% used: "
                    f"${spent + amount:.4f} of ${cap:g}"
                )

    def settle(self, reservation: Reservation, actual: float | None) -> None:
        """Replace the held amount by the real cost (unpriced calls keep the estimate)."""
        if not reservation.periods or actual is None:
            return
        change = actual - reservation.amount
        with self._engine().begin() as connection:
            guard_log.adjust_spend(connection, self.workflow, reservation.periods, change)

    def usage(self) -> list[dict[str, Any]]:
        """Spend per period against its cap (for `smallops status`)."""
        rows = []
        with self._engine().connect() as connection:
            for period, start, cap in self.periods():
                spent = guard_log.spent_in_period(connection, self.workflow, period, start)
                rows.append(
                    {
                        "period": period,
                        "spent_usd": round(float(spent), 6),
                        "cap_usd": cap,
                        "used": round(float(spent) / cap, 4),
                    }
                )
        return rows

    def _row(self, connection: Connection, period: str, start: datetime) -> float:
        """The period's spend, creating its row from the recorded costs the first time."""
        spent = guard_log.period_spend(connection, self.workflow, period, lock=True)
        if spent is not None:
            return spent
        recorded = guard_log.spend_since(connection, self.workflow, start)
        now = datetime.now(timezone.utc)
        guard_log.open_period(connection, self.workflow, period, recorded, now)
        return self._row(connection, period, start)


_KIND = {"day": "daily", "month": "monthly"}


class _Refused(Exception):
    """A cap would be passed: rolls the reservation's transaction back."""


_stores: dict[str, SharedStore] = {}
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _database_store(database: str) -> SharedStore:
    """One per database per process, so an outage is noticed (and logged) once."""
    with _lock:
        if database not in _stores:
            _stores[database] = SharedStore(
                "budget",
                "the log database",
                "calls go to the fallback (budget_unavailable)",
                (DatabaseError, OSError, TimeoutError),
            )
        return _stores[database]


def _reserver() -> ThreadPoolExecutor:
    """Reservations run here, so a call can stop waiting for one: a stalled database gives
    no other way out. Threads stuck on a stall are few: one call per RETRY_AFTER tries it."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="smallops-reserve")
        return _pool
