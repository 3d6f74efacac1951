"""The guards' rows: guard events (breaker transitions, budgets reached) and the budget ledger
(`budget_spend`, one row per workflow and period).

The ledger's functions are steps of the caller's transaction: a reservation reads each period's
row locked (`FOR UPDATE`), opens it from the recorded costs the first time (an insert that does
nothing when a racing process opened it first), then holds the amount with one conditional
update, all in one write transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from smallops.storage.schema import budget_spend, guard_events, runs


def record_guard_event(engine: Engine, event: Mapping[str, Any]) -> None:
    """Write one guard event (a row of `guard_events`) in its own transaction."""
    with engine.begin() as connection:
        connection.execute(guard_events.insert().values(**event))


def recent_guard_events(engine: Engine, workflow: str, limit: int = 5) -> list[dict[str, Any]]:
    """A workflow's latest guard events, newest first, as the database returns them."""
    query = (
        select(guard_events)
        .where(guard_events.c.workflow == workflow)
        .order_by(guard_events.c.at.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def spend_since(connection: Connection, workflow: str, start: datetime) -> float:
    """The recorded cost of a workflow's runs started at or after `start` (unpriced runs: 0)."""
    total = connection.execute(
        select(func.coalesce(func.sum(runs.c.cost_usd), 0.0)).where(
            runs.c.workflow == workflow, runs.c.started_at >= start
        )
    ).scalar()
    return float(total or 0.0)


def period_spend(
    connection: Connection, workflow: str, period: str, *, lock: bool = False
) -> float | None:
    """What the ledger holds as spent in a period; None when its row is not open yet. With
    `lock`, the row stays locked until the transaction ends."""
    query = select(budget_spend.c.spent_usd).where(
        budget_spend.c.workflow == workflow, budget_spend.c.period == period
    )
    if lock:
        query = query.with_for_update()
    spent = connection.execute(query).scalar()
    return None if spent is None else float(spent)


def spent_in_period(connection: Connection, workflow: str, period: str, start: datetime) -> float:
    """A period's spend as a reader sees it (nothing locked, nothing opened): the ledger's when
    its row is open, else (nobody has spent in it yet) the recorded costs since its `start`."""
    spent = period_spend(connection, workflow, period)
    return spend_since(connection, workflow, start) if spent is None else spent


def open_period(
    connection: Connection, workflow: str, period: str, spent: float, now: datetime
) -> None:
    """Create a period's row with `spent`, unless another process created it first."""
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    connection.execute(
        insert(budget_spend)
        .values(workflow=workflow, period=period, spent_usd=spent, updated_at=now)
        .on_conflict_do_nothing()
    )


def hold_spend(
    connection: Connection, workflow: str, period: str, amount: float, cap: float, now: datetime
) -> bool:
    """Add `amount` to a period's spend if that keeps it within `cap`; whether it did."""
    held = connection.execute(
        update(budget_spend)
        .where(
            budget_spend.c.workflow == workflow,
            budget_spend.c.period == period,
            budget_spend.c.spent_usd + amount <= cap,
        )
        .values(spent_usd=budget_spend.c.spent_usd + amount, updated_at=now)
    ).rowcount
    return held == 1


def adjust_spend(
    connection: Connection, workflow: str, periods: Collection[str], change: float
) -> None:
    """Add `change` (negative to give back) to the spend of each of `periods`."""
    connection.execute(
        update(budget_spend)
        .where(budget_spend.c.workflow == workflow, budget_spend.c.period.in_(list(periods)))
        .values(spent_usd=budget_spend.c.spent_usd + change)
    )
