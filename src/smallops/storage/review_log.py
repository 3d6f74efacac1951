"""The review queue's rows: items waiting for a human, their leases, and the decisions taken.

Functions that are one step of a caller's transaction (a claim, a decision) take its
`Connection`; the caller decides where the transaction begins and ends. `lock_item` and
`next_free_item` lock what they read (`FOR UPDATE`, and `SKIP LOCKED` for a claim, on Postgres;
SQLite's write lock serialises them otherwise).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    Text,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)

from smallops.errors import InputError
from smallops.ids import uuid7
from smallops.storage.prompt_parts import expand_runs
from smallops.storage.queries import plain_row, run_id_matches
from smallops.storage.schema import prompt_versions, review_decisions, review_items, runs


def item_ids_matching(connection: Connection, given: str) -> list[str]:
    """Up to two run ids of queued items that `given` may stand for (`run_id_matches`)."""
    column = review_items.c.run_id
    query = select(column).where(run_id_matches(column, given)).limit(2)
    return [str(found) for found in connection.execute(query).scalars().all()]


@dataclass(frozen=True)
class QueueOrder:
    """The order of a queue view, for SQL to sort and page: by age (`newest` first or oldest),
    or by an output field's rank in its declared values (`ranks`: per workflow, the values in
    order; `reverse` turns the ranks round), oldest first among equals, items without a ranked
    value last. A field is read from the final output once decided, else from the output."""

    field: str | None = None
    ranks: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    reverse: bool = False
    newest: bool = False


def list_items(
    connection: Connection,
    workflow: str | None,
    state: str | Sequence[str] | None,
    limit: int,
    *,
    order: QueueOrder | None = None,
    after: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """Items with their runs' inputs and content mode: pending ones oldest first, others newest
    first; every state when `state` is None, every workflow when `workflow` is None. Several
    states (the decided ones) come newest decided first. With `order`, in that order instead.

    Each row carries `sort_key`, the values it is ordered by; `after` (a row's sort_key) starts
    the page after that row: keyset paging, so a page deep in a long queue costs what the first
    does, and items decided meanwhile shift nothing."""
    keys, descending = _sort_keys(connection.dialect.name, state, order)
    query = (
        select(review_items, runs.c.inputs, runs.c.content, *keys)
        .join(runs, runs.c.id == review_items.c.run_id, isouter=True)
        .limit(limit)
    )
    states = [state] if isinstance(state, str) else list(state or ())
    if len(states) == 1:  # `=`: the queue indexes lead with the state
        query = query.where(review_items.c.state == states[0])
    elif states:
        query = query.where(review_items.c.state.in_(states))
    if workflow:
        query = query.where(review_items.c.workflow == workflow)
    if after is not None:
        kinds = (int, datetime, str) if len(keys) == 3 else (datetime, str)  # as _sort_keys
        if len(after) != len(kinds) or not all(
            isinstance(value, kind) and not isinstance(value, bool)
            for value, kind in zip(after, kinds, strict=True)
        ):
            raise InputError(
                "the page cursor (?after=) does not fit this order",
                hint="start from the first page: open the queue without ?after=",
            )
        bound = tuple_(*(literal(value, key.type) for value, key in zip(after, keys, strict=True)))
        query = query.where(tuple_(*keys) < bound if descending else tuple_(*keys) > bound)
    query = query.order_by(*(key.desc() if descending else key for key in keys))
    found = []
    for row in connection.execute(query):
        item = plain_row(row._mapping)
        item["sort_key"] = [item.pop(f"sort_{i}") for i in range(len(keys))]
        found.append(item)
    return found


def _sort_keys(
    dialect: str, state: str | Sequence[str] | None, order: QueueOrder | None
) -> tuple[list[Any], bool]:
    """The labelled expressions a view is ordered by (the run id last: unique, so a keyset
    cursor never skips or repeats a row) and whether they run descending."""
    items = review_items.c
    if order is not None and order.field is not None:
        return [
            _rank(dialect, order).label("sort_0"),
            *_labelled(items.created_at, items.run_id, start=1),
        ], False
    if order is not None:
        return _labelled(items.created_at, items.run_id), order.newest
    states = [state] if isinstance(state, str) else list(state or ())
    if states == ["pending"]:
        return _labelled(items.created_at, items.run_id), False
    if isinstance(state, str) or not states:
        return _labelled(items.created_at, items.run_id), True
    return _labelled(items.decided_at, items.run_id), True


def _labelled(*columns: Any, start: int = 0) -> list[Any]:
    return [column.label(f"sort_{start + i}") for i, column in enumerate(columns)]


def _rank(dialect: str, order: QueueOrder) -> Any:
    """The rank of an item's value of `order.field` among its workflow's declared values: 0, 1,
    ... (turned round with `reverse`); one past the last for a value not declared; one more for
    an item without the field. Strings and integers are ranked; other values count as
    undeclared."""
    assert order.field is not None
    value = func.coalesce(
        _field_text(dialect, review_items.c.final_output, order.field),
        _field_text(dialect, review_items.c.output, order.field),
    )
    longest = max((len(values) for values in order.ranks.values()), default=0)
    whens = []
    for workflow, values in sorted(order.ranks.items()):
        count = len(values)
        for index, declared in enumerate(values):
            if isinstance(declared, bool) or not isinstance(declared, (str, int)):
                continue
            rank = count - 1 - index if order.reverse else index
            whens.append((and_(review_items.c.workflow == workflow, value == str(declared)), rank))
    missing = (value.is_(None), longest + 1)
    return case(missing, *whens, else_=longest) if whens else case(missing, else_=longest)


def _field_text(dialect: str, column: Any, name: str) -> Any:
    """An object's field `name` as SQL text (a string unquoted, a number in digits); NULL when
    the value is not an object or lacks the field."""
    if dialect == "postgresql":
        return column.op("->>", return_type=Text())(literal(name, String()))
    path = literal("$." + json.dumps(name), String())
    return cast(func.json_extract(column, path), Text())


def pending_counts(connection: Connection) -> dict[str, int]:
    """Pending items per workflow."""
    query = (
        select(review_items.c.workflow, func.count())
        .where(review_items.c.state == "pending")
        .group_by(review_items.c.workflow)
    )
    return {name: int(count) for name, count in connection.execute(query)}


def item_with_run(connection: Connection, run_id: str) -> dict[str, Any] | None:
    """One item with its run's inputs, messages, status and error, and its prompt template."""
    row = connection.execute(
        select(
            review_items,
            runs.c.inputs,
            runs.c.messages,
            runs.c.compacted,
            runs.c.status,
            runs.c.error_message,
            prompt_versions.c.template,
        )
        .join(runs, runs.c.id == review_items.c.run_id, isouter=True)
        .join(
            prompt_versions,
            prompt_versions.c.id == review_items.c.prompt_version,
            isouter=True,
        )
        .where(review_items.c.run_id == run_id)
    ).first()
    if row is None:
        return None
    item = plain_row(row._mapping)
    expand_runs(connection, [item])
    return item


def decision_history(connection: Connection, run_id: str) -> list[dict[str, Any]]:
    """Every decision row of a run (skips and releases too), oldest first."""
    history = connection.execute(
        select(review_decisions)
        .where(review_decisions.c.run_id == run_id)
        .order_by(review_decisions.c.id)
    ).all()
    return [plain_row(row._mapping) for row in history]


def item_row(connection: Connection, run_id: str) -> dict[str, Any] | None:
    """One item's own row, unlocked."""
    row = connection.execute(select(review_items).where(review_items.c.run_id == run_id)).first()
    return plain_row(row._mapping) if row is not None else None


def lock_item(connection: Connection, run_id: str) -> dict[str, Any] | None:
    """One item's own row, locked until the caller's transaction ends."""
    row = connection.execute(
        select(review_items).where(review_items.c.run_id == run_id).with_for_update()
    ).first()
    return plain_row(row._mapping) if row is not None else None


def next_free_item(
    connection: Connection,
    reviewer: str,
    now: datetime,
    workflow: str | None,
    exclude: Collection[str],
) -> str | None:
    """The run id of the oldest pending item that is free (unclaimed, its lease expired, or
    held by `reviewer`) and not in `exclude`, locked; rows other claims lock are skipped."""
    query = (
        select(review_items.c.run_id)
        .where(review_items.c.state == "pending")
        .where(
            or_(
                review_items.c.claimed_until.is_(None),
                review_items.c.claimed_until < now,
                review_items.c.claimed_by == reviewer,
            )
        )
        .order_by(review_items.c.created_at, review_items.c.run_id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if workflow:
        query = query.where(review_items.c.workflow == workflow)
    if exclude:
        query = query.where(review_items.c.run_id.not_in(list(exclude)))
    found: str | None = connection.execute(query).scalar()
    return found


def set_claim(connection: Connection, run_id: str, reviewer: str, until: datetime) -> None:
    """Lease an item to `reviewer` until `until`."""
    connection.execute(
        update(review_items)
        .where(review_items.c.run_id == run_id)
        .values(claimed_by=reviewer, claimed_until=until)
    )


def clear_claim(connection: Connection, run_id: str) -> None:
    """Give an item's lease back, whoever holds it."""
    connection.execute(
        update(review_items)
        .where(review_items.c.run_id == run_id)
        .values(claimed_by=None, claimed_until=None)
    )


def clear_claim_of(connection: Connection, run_id: str, reviewer: str) -> int:
    """Give back the lease `reviewer` holds on a pending item; how many rows changed (0 or 1)."""
    return connection.execute(
        update(review_items)
        .where(review_items.c.run_id == run_id)
        .where(review_items.c.claimed_by == reviewer)
        .where(review_items.c.state == "pending")
        .values(claimed_by=None, claimed_until=None)
    ).rowcount


def mark_decided(
    connection: Connection,
    run_id: str,
    *,
    state: str,
    reviewer: str,
    at: datetime,
    final_output: Any,
    reason: str | None,
) -> int:
    """Mark a pending item decided and free its lease; how many rows changed (0 or 1)."""
    return connection.execute(
        update(review_items)
        .where(and_(review_items.c.run_id == run_id, review_items.c.state == "pending"))
        .values(
            state=state,
            decided_by=reviewer,
            decided_at=at,
            final_output=final_output,
            reject_reason=reason,
            claimed_by=None,
            claimed_until=None,
        )
    ).rowcount


def append_decision(
    connection: Connection,
    item: dict[str, Any],
    action: str,
    reviewer: str,
    at: datetime,
    before: Any,
    after: Any,
    reason: str | None,
) -> None:
    """Append one decision row (who did what to `item`, when, the output before and after)."""
    connection.execute(
        review_decisions.insert().values(
            id=uuid7(),
            run_id=item["run_id"],
            workflow=item["workflow"],
            action=action,
            reviewer=reviewer,
            decided_at=at,
            output_before=before,
            output_after=after,
            reason=reason,
            route=item["route"],
        )
    )


def note_hook_error(connection: Connection, run_id: str, error: str) -> None:
    """Write `error` on the latest decision row of a run."""
    latest = connection.execute(
        select(review_decisions.c.id)
        .where(review_decisions.c.run_id == run_id)
        .order_by(review_decisions.c.id.desc())
        .limit(1)
    ).scalar()
    connection.execute(
        update(review_decisions).where(review_decisions.c.id == latest).values(hook_error=error)
    )
