"""Retention: old runs lose their content and keep their metadata.

A pruned run keeps what reports, budgets, graduation and drift need (status, model, tokens,
cost, latency, the output's labels such as its category, review actions) and drops what was
said: inputs, rendered messages, the output's free text, raw requests and responses, error
text, and the outputs in its review item, decisions and webhook payloads. A run whose review
item is still pending is never pruned: a human still needs it. Work goes in small
transactions, each leaving every run either whole or pruned, so an interrupted prune is
finished by running it again.

Then the workflow's prompt parts (prompt_parts.py) that no run holding content can refer to
any more are deleted, so a pruned run's rendered prompt is gone too. Every write that refers to
a part moves the part's `last_used` on to its own time (at most store.PART_REFRESH behind), in
the transaction that writes the run; and a run is written after it started. So a part whose
`last_used` is before the oldest moment a run still holding content can have been written is
no longer referred to. That moment is taken, before the runs are pruned, as the earliest of the
cutoff, the oldest run still waiting for a reviewer and the prune's own start (an old run
replayed from a spool while the prune runs is not pruned, and keeps its parts), less
PART_MARGIN for the refresh, a write's time bound and clocks that differ between machines.
No scan of the runs is needed. A part last used within that margin of the cutoff outlives the
runs that used it until the next prune.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, and_, delete, func, null, or_, select, update

from smallops.content import PRUNED, attempt_metadata
from smallops.labels import enum_fields, labels
from smallops.storage.db import write_transaction
from smallops.storage.schema import (
    prompt_parts,
    prompt_versions,
    review_decisions,
    review_items,
    runs,
    webhook_deliveries,
)

BATCH = 500
PART_MARGIN = timedelta(hours=1)  # see the module's docstring


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
    """Empty the content of `workflow`'s runs started before `before`, then delete the prompt
    parts no run with content refers to any more; returns how many runs."""
    parts_before = _parts_unused_before(engine, workflow, before)
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
    forget_parts(engine, workflow, parts_before)
    return done


def _parts_unused_before(engine: Engine, workflow: str, before: datetime) -> datetime:
    """The time before which the workflow's parts will be unused once its runs started before
    `before` are pruned (the module's docstring says why)."""
    query = select(func.min(review_items.c.created_at)).where(
        review_items.c.state == "pending", review_items.c.workflow == workflow
    )
    with engine.connect() as connection:
        waiting = connection.scalar(query)
    moments = [before, datetime.now(timezone.utc)]
    if waiting is not None:
        moments.append(waiting if waiting.tzinfo else waiting.replace(tzinfo=timezone.utc))
    return min(moments) - PART_MARGIN


def forget_parts(engine: Engine, workflow: str, unused_before: datetime) -> int:
    """Delete the workflow's prompt parts last used before `unused_before`, in small
    transactions; returns how many."""
    old = and_(prompt_parts.c.workflow == workflow, prompt_parts.c.last_used < unused_before)
    done = 0
    while True:
        with write_transaction(engine) as connection:  # SQLite: the write lock before the read
            ids = connection.scalars(select(prompt_parts.c.id).where(old).limit(BATCH)).all()
            if not ids:
                return done
            # The condition again: a write may have used a part since it was selected.
            connection.execute(delete(prompt_parts).where(old, prompt_parts.c.id.in_(ids)))
        done += len(ids)


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
        .values(inputs={}, messages=null(), error_message=None, content=PRUNED, compacted=None)
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
