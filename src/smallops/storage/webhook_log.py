"""The webhook outbox's rows: one delivery per decision, leased to one sender at a time.

`add_delivery` and `claim_due` are steps of the caller's transaction (the decision's, and the
claim's write transaction). `claim_due` locks the row it leases with `FOR UPDATE SKIP LOCKED` on
Postgres, so two senders never take the same delivery.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, or_, select, update

from smallops.storage.schema import review_items, webhook_deliveries


def add_delivery(connection: Connection, delivery: Mapping[str, Any]) -> None:
    """Add one delivery (a row of `webhook_deliveries`) to the outbox."""
    connection.execute(webhook_deliveries.insert().values(**delivery))


def waiting_per_workflow(engine: Engine) -> dict[str, int]:
    """Deliveries not yet delivered, by the workflow whose decision they carry."""
    query = (
        select(review_items.c.workflow, func.count())
        .select_from(webhook_deliveries)
        .join(review_items, review_items.c.run_id == webhook_deliveries.c.run_id)
        .where(webhook_deliveries.c.state == "pending")
        .group_by(review_items.c.workflow)
    )
    with engine.connect() as connection:
        return {workflow: int(count) for workflow, count in connection.execute(query)}


def claim_due(
    connection: Connection,
    workflows: Collection[str],
    run_id: str | None,
    now: datetime,
    until: datetime,
) -> dict[str, Any] | None:
    """Lease until `until` the next pending delivery of one of `workflows` that is due at `now`
    and not leased (only `run_id`'s, when given); the delivery's row with its workflow's name,
    or None."""
    deliveries = webhook_deliveries.c
    query = (
        select(webhook_deliveries, review_items.c.workflow)
        .join(review_items, review_items.c.run_id == deliveries.run_id)
        .where(deliveries.state == "pending")
        .where(deliveries.next_attempt_at <= now)
        .where(or_(deliveries.claimed_until.is_(None), deliveries.claimed_until < now))
        .where(review_items.c.workflow.in_(list(workflows)))
        .order_by(deliveries.next_attempt_at, deliveries.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=webhook_deliveries)
    )
    if run_id is not None:
        query = query.where(deliveries.run_id == run_id)
    row = connection.execute(query).first()
    if row is None:
        return None
    delivery = dict(row._mapping)
    lease = update(webhook_deliveries).where(deliveries.id == delivery["id"])
    connection.execute(lease.values(claimed_until=until))
    return delivery


def release_lease(engine: Engine, delivery_id: str, until: datetime) -> int:
    """Clear the lease on a pending delivery if it is still the one that ends at `until` (not
    since passed to another sender); how many rows changed (0 or 1)."""
    with engine.begin() as connection:
        return connection.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.id == delivery_id)
            .where(webhook_deliveries.c.state == "pending")
            .where(webhook_deliveries.c.claimed_until == until)
            .values(claimed_until=None)
        ).rowcount


def settle_delivery(engine: Engine, delivery_id: str, values: Mapping[str, Any]) -> None:
    """Write an attempt's outcome on a delivery that is still pending."""
    with engine.begin() as connection:
        connection.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.id == delivery_id)
            .where(webhook_deliveries.c.state == "pending")
            .values(**values)
        )
