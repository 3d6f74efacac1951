"""Graduation's rows: the review decisions that are its evidence, and its promotions and
demotions (`graduation_events`).

Evidence is a final decision (approve, correct, reject) on an item queued by the review policy
(reason "policy"). Functions that take a `Connection` are steps of the caller's transaction:
`lock_standings`, then a read of the standings, then the events written from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, case, func, literal, select

from smallops.kinds import GRADUATION_ROUTES
from smallops.storage.queries import PRODUCTION, plain_row
from smallops.storage.schema import (
    graduation_events,
    prompt_versions,
    review_decisions,
    review_items,
    runs,
)

#: The decisions that count as evidence (a skip or a release is not a judgement).
FINAL_ACTIONS = ("approve", "correct", "reject")
GRADUATION_LOCK = 7_465_302  # Postgres advisory lock id: one process changes standings at a time


class Reviewed(NamedTuple):
    """One final decision on a policy review, with what it is evidence about."""

    action: str
    decided_at: datetime  # aware UTC
    classes: list[str]
    prompt_version: str
    model_served: str | None


def policy_decisions(connection: Connection, workflow: str, prompt_version: str) -> list[Reviewed]:
    """The final decisions on a prompt version's policy reviews, with each item's classes and
    served model."""
    query = (
        select(
            review_decisions.c.action,
            review_decisions.c.decided_at,
            review_items.c.classes,
            review_items.c.prompt_version,
            review_items.c.model_served,
        )
        .join(review_items, review_items.c.run_id == review_decisions.c.run_id)
        .where(review_decisions.c.workflow == workflow)
        .where(review_decisions.c.action.in_(FINAL_ACTIONS))
        .where(review_items.c.reason == "policy")
        .where(review_items.c.prompt_version == prompt_version)
    )
    return [
        Reviewed(**{**plain_row(row._mapping), "classes": row.classes or []})
        for row in connection.execute(query)
    ]


class Tally(NamedTuple):
    """Final decisions on a prompt version's policy reviews, counted together: those on items
    with the same classes and served model, approved or not, decided after the same number of
    the given demotion times."""

    classes: list[str]
    model_served: str | None
    approved: bool
    epoch: int  # how many of the demotion times are before these decisions
    decisions: int
    first: datetime  # aware UTC: the earliest of these decisions


def policy_decision_tallies(
    connection: Connection, workflow: str, prompt_version: str, demotions: Sequence[datetime]
) -> list[Tally]:
    """`policy_decisions` counted in the database, not read one by one: grouped by the items'
    classes, served model, approved or not, and `epoch` (how many of `demotions` came strictly
    before the decision), so a caller can count what was decided after any one of them."""
    approved = case((review_decisions.c.action == "approve", 1), else_=0).label("approved")
    epoch: Any = literal(0)
    for at in sorted(set(demotions)):
        epoch = epoch + case((review_decisions.c.decided_at > at, 1), else_=0)
    epoch = epoch.label("epoch")
    query = (
        select(
            review_items.c.classes,
            review_items.c.model_served,
            approved,
            epoch,
            func.count().label("decisions"),
            func.min(review_decisions.c.decided_at).label("first"),
        )
        .join(review_items, review_items.c.run_id == review_decisions.c.run_id)
        .where(review_decisions.c.workflow == workflow)
        .where(review_decisions.c.action.in_(FINAL_ACTIONS))
        .where(review_items.c.reason == "policy")
        .where(review_items.c.prompt_version == prompt_version)
        .group_by(review_items.c.classes, review_items.c.model_served, approved, epoch)
    )
    return [
        Tally(
            classes=row.classes or [],
            model_served=row.model_served,
            approved=bool(row.approved),
            epoch=int(row.epoch),
            decisions=int(row.decisions),
            first=_aware(row.first),
        )
        for row in connection.execute(query)
    ]


def _aware(value: Any) -> datetime:
    """A timestamp read back as aware UTC (SQLite's may come back naive, or as text)."""
    at: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def graduation_events_of(
    connection: Connection, workflow: str, prompt_version: str
) -> list[dict[str, Any]]:
    """A prompt version's promotions and demotions, oldest first."""
    query = (
        select(graduation_events)
        .where(graduation_events.c.workflow == workflow)
        .where(graduation_events.c.prompt_version == prompt_version)
        .order_by(graduation_events.c.at, graduation_events.c.id)
    )
    return [plain_row(row._mapping) for row in connection.execute(query)]


def graduation_history(engine: Engine, workflow: str) -> list[dict[str, Any]]:
    """Every promotion and demotion of a workflow's classes, oldest first."""
    query = (
        select(graduation_events)
        .where(graduation_events.c.workflow == workflow)
        .order_by(graduation_events.c.at, graduation_events.c.id)
    )
    with engine.connect() as connection:
        return [plain_row(row._mapping) for row in connection.execute(query)]


def reviews_per_earlier_version(
    engine: Engine, workflow: str, prompt_version: str
) -> dict[str, int]:
    """Final decisions on policy reviews per prompt version other than `prompt_version`, the
    most recently reviewed first."""
    last = func.max(review_decisions.c.decided_at)
    query = (
        select(review_items.c.prompt_version, func.count(), last)
        .join(review_items, review_items.c.run_id == review_decisions.c.run_id)
        .where(review_decisions.c.workflow == workflow)
        .where(review_decisions.c.action.in_(FINAL_ACTIONS))
        .where(review_items.c.reason == "policy")
        .where(review_items.c.prompt_version != prompt_version)
        .group_by(review_items.c.prompt_version)
        .order_by(last.desc())
    )
    with engine.connect() as connection:
        return {version: count for version, count, _ in connection.execute(query)}


def latest_graduation_model(engine: Engine, workflow: str, prompt_version: str) -> str | None:
    """The model that served the latest production output routed by graduation on a prompt
    version; None when there is none, or its provider named none."""
    query = (
        select(runs.c.model_served)
        .where(runs.c.workflow == workflow)
        .where(runs.c.prompt_version == prompt_version)
        .where(runs.c.review_route.in_(GRADUATION_ROUTES))
        .where(PRODUCTION)
        .order_by(runs.c.started_at.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        model: str | None = connection.execute(query).scalar()
    return model


def pinned_model_of(connection: Connection, prompt_version: str) -> str | None:
    """The model a prompt version was pinned to (as written: `provider:model`), if it is known."""
    model: str | None = connection.execute(
        select(prompt_versions.c.model).where(prompt_versions.c.id == prompt_version)
    ).scalar()
    return model


def add_graduation_events(connection: Connection, events: Sequence[dict[str, Any]]) -> None:
    """Write promotions and demotions (rows of `graduation_events`)."""
    connection.execute(graduation_events.insert(), list(events))


def lock_standings(connection: Connection) -> None:
    """Serialise changes of standing until the transaction ends: SQLite's write transactions
    already are serial."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({GRADUATION_LOCK})")
