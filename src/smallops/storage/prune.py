"""Retention: old runs lose their content and keep their metadata.

A pruned run keeps what reports, budgets, graduation and drift need (status, model, tokens,
cost, latency, the output's labels such as its category, review actions) and drops what was
said: inputs, rendered messages, the output's free text, raw requests and responses, error
text, and the outputs in its review item, decisions and webhook payloads. A run whose review
item is still pending is never pruned: a human still needs it. Work goes in small
transactions, each leaving every run either whole or pruned, so an interrupted prune is
finished by running it again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, and_, func, null, or_, select, update

from smallops.content import PRUNED, attempt_metadata
from smallops.labels import enum_fields, labels
from smallops.storage.schema import (
    prompt_versions,
    review_decisions,
    review_items,
    runs,
    webhook_deliveries,
)

BATCH = 500


@dataclass
class PruneCount:
    """What a prune of one workflow did (or, dry, would do)."""

    workflow: str
    before: datetime
    runs: int = 0
    kept_for_review: int = 0


def retention_cutoffs(
    retention_days: Mapping[str, int | None], now: datetime | None = None
) -> dict[str, datetime]:
    """Each workflow that sets a retention, with the time before which its runs lose their
    content; workflows whose retention is None are left out."""
    now = now or datetime.now(timezone.utc)
    return {
        workflow: now - timedelta(days=days)
        for workflow, days in retention_days.items()
        if days is not None
    }


def prunable(workflow: str, before: datetime) -> Any:
    """The condition for runs of `workflow` older than `before` that still hold content."""
    return and_(
        runs.c.workflow == workflow,
        runs.c.started_at < before,
        or_(runs.c.content.is_(None), runs.c.content != PRUNED),
    )


def _awaiting_review() -> Any:
    return select(review_items.c.run_id).where(review_items.c.state == "pending")


def count(engine: Engine, workflow: str, before: datetime) -> PruneCount:
    """How many runs a prune would empty, and how many it keeps because a human needs them."""
    result = PruneCount(workflow, before)
    old = prunable(workflow, before)
    with engine.connect() as connection:
        result.kept_for_review = (
            connection.scalar(select(func.count()).where(old, runs.c.id.in_(_awaiting_review())))
            or 0
        )
        result.runs = (
            connection.scalar(select(func.count()).where(old, runs.c.id.not_in(_awaiting_review())))
            or 0
        )
    return result


def prune(
    engine: Engine,
    workflow: str,
    before: datetime,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Empty the content of `workflow`'s runs started before `before`; returns how many."""
    done = 0
    select_batch = (
        select(runs.c.id, runs.c.attempts, runs.c.output, runs.c.prompt_version)
        .where(prunable(workflow, before), runs.c.id.not_in(_awaiting_review()))
        .order_by(runs.c.id)
        .limit(BATCH)
    )
    label_fields = _label_fields(engine, workflow)
    last = ""  # ids are time-ordered: each batch starts after the previous one
    while True:
        with engine.begin() as connection:
            batch = connection.execute(select_batch.where(runs.c.id > last)).all()
            if not batch:
                break
            _prune_batch(connection, batch, label_fields)
        last = batch[-1].id
        done += len(batch)
        progress(len(batch))
    return done


def _label_fields(engine: Engine, workflow: str) -> dict[str, list[str]]:
    """Each prompt version's label fields (enums and Literals), from its stored schema."""
    query = select(prompt_versions.c.id, prompt_versions.c.output_schema).where(
        prompt_versions.c.workflow == workflow
    )
    with engine.connect() as connection:
        return {
            version: list(enum_fields(schema or {}))
            for version, schema in connection.execute(query)
        }


def _prune_batch(connection: Any, batch: Sequence[Any], label_fields: dict[str, list[str]]) -> None:
    ids = [row.id for row in batch]
    for row in batch:  # how each request went, and the output's labels; not what was said
        kept = labels(row.output, label_fields.get(row.prompt_version, ()))
        connection.execute(
            update(runs)
            .where(runs.c.id == row.id)
            .values(
                attempts=attempt_metadata(row.attempts or []),
                output=kept if kept is not None else null(),
            )
        )
    connection.execute(
        update(runs)
        .where(runs.c.id.in_(ids))
        .values(inputs={}, messages=null(), error_message=None, content=PRUNED)
    )
    connection.execute(
        update(review_items)
        .where(review_items.c.run_id.in_(ids))
        .values(output=null(), final_output=null(), reject_reason=None)
    )
    connection.execute(
        update(review_decisions)
        .where(review_decisions.c.run_id.in_(ids))
        .values(output_before=null(), output_after=null(), reason=None)
    )
    connection.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.run_id.in_(ids), webhook_deliveries.c.state == "delivered")
        .values(payload="{}")
    )
