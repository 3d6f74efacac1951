"""The review queue in the database: leases, and decisions that are taken exactly once.

A reviewer claims an item under a lease (10 minutes by default) so that two reviewers never work
the same item; an expired lease puts the item back in the queue. Claims take the oldest free item
with `FOR UPDATE SKIP LOCKED` on Postgres, under SQLite's write lock otherwise. A decision is one
transaction that checks the item is still pending and not held by someone else, marks it decided
and appends the decision (who, when, output before and after) — with whatever else must happen
atomically with it (the webhook outbox, a demotion).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select, update

from smallops.errors import DecidedError as DecidedError
from smallops.errors import HeldError as HeldError
from smallops.errors import InputError, NotFoundError
from smallops.ids import uuid7
from smallops.storage.db import write_transaction
from smallops.storage.queries import plain_row, run_id_matches
from smallops.storage.schema import prompt_versions, review_decisions, review_items, runs

DEFAULT_LEASE = timedelta(minutes=10)
STATES = {"approve": "approved", "correct": "corrected", "reject": "rejected"}


@dataclass(frozen=True)
class Decision:
    """A reviewer's final word on one run."""

    run_id: str
    workflow: str
    action: str  # approve | correct | reject
    status: str  # approved | corrected | rejected
    output: Any  # the approved or corrected output (a dict or text); None when rejected
    reviewer: str
    reason: str | None
    decided_at: datetime


Extra = Callable[[Connection, dict[str, Any], dict[str, Any]], None]


class ReviewQueue:
    """Queue operations on one database; `now` is injectable for tests."""

    def __init__(self, engine: Engine, now: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.now = now or (lambda: datetime.now(timezone.utc))

    def resolve(self, run_id: str) -> str:
        """The full run id of a queued item from its id, its short id, or a unique start of
        either (8+ characters)."""
        column = review_items.c.run_id
        with self.engine.connect() as connection:
            found = (
                connection.execute(select(column).where(run_id_matches(column, run_id)).limit(2))
                .scalars()
                .all()
            )
        if not found:
            raise NotFoundError(
                f"no review item for run {run_id!r}", hint="`smallops review list` shows the queue"
            )
        if len(found) > 1:
            raise InputError(f"run id {run_id!r} matches several items", hint="give more of it")
        return str(found[0])

    def items(
        self, workflow: str | None = None, *, state: str | None = "pending", limit: int = 100
    ) -> list[dict[str, Any]]:
        """Items, oldest first (for pending) or newest first, with their runs' inputs."""
        query = (
            select(review_items, runs.c.inputs, runs.c.content)
            .join(runs, runs.c.id == review_items.c.run_id, isouter=True)
            .limit(limit)
        )
        if state:
            query = query.where(review_items.c.state == state)
        if workflow:
            query = query.where(review_items.c.workflow == workflow)
        order = review_items.c.created_at
        query = query.order_by(order if state == "pending" else order.desc())
        with self.engine.connect() as connection:
            return [self._view(row._mapping) for row in connection.execute(query)]

    def counts(self) -> dict[str, int]:
        """Pending items per workflow."""
        query = (
            select(review_items.c.workflow, func.count())
            .where(review_items.c.state == "pending")
            .group_by(review_items.c.workflow)
        )
        with self.engine.connect() as connection:
            return {name: int(count) for name, count in connection.execute(query)}

    def item(self, run_id: str) -> dict[str, Any]:
        """One item with its run (inputs, messages, prompt template) and its decisions."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(
                    review_items,
                    runs.c.inputs,
                    runs.c.messages,
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
                raise NotFoundError(
                    f"no review item for run {run_id!r}",
                    hint="`smallops review list` shows the queue",
                )
            history = connection.execute(
                select(review_decisions)
                .where(review_decisions.c.run_id == run_id)
                .order_by(review_decisions.c.id)
            ).all()
        view = self._view(row._mapping)
        view["history"] = [plain_row(h._mapping) for h in history]
        return view

    def claim_next(
        self,
        reviewer: str,
        workflow: str | None = None,
        lease: timedelta = DEFAULT_LEASE,
        *,
        exclude: Collection[str] = (),
    ) -> dict[str, Any] | None:
        """Claim the oldest free item (unclaimed or lease expired) that is not in `exclude` (the
        ones the reviewer skipped this session); None when there is none."""
        now = self.now()
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
        with write_transaction(self.engine) as connection:
            run_id = connection.execute(query).scalar()
            if run_id is None:
                return None
            self._set_claim(connection, run_id, reviewer, now + lease)
        return self.item(run_id)

    def claim(self, run_id: str, reviewer: str, lease: timedelta = DEFAULT_LEASE) -> dict[str, Any]:
        """Claim one item; HeldError if someone else holds it, DecidedError if it is decided."""
        now = self.now()
        with write_transaction(self.engine) as connection:
            self._lock_pending(connection, run_id, reviewer, now)
            self._set_claim(connection, run_id, reviewer, now + lease)
        return self.item(run_id)

    def release(self, run_id: str, reviewer: str, *, action: str = "skip") -> None:
        """Give an item back to the queue (a skip), recording who did."""
        now = self.now()
        with write_transaction(self.engine) as connection:
            item = self._lock_pending(connection, run_id, reviewer, now)
            connection.execute(
                update(review_items)
                .where(review_items.c.run_id == run_id)
                .values(claimed_by=None, claimed_until=None)
            )
            self._append(connection, item, action, reviewer, now, item["output"], None, None)

    def unclaim(self, claims: Mapping[str, str]) -> int:
        """Clear leases (a server that stops gives back what its reviewers held), without
        recording a skip; an item decided since, or claimed by someone else, is left alone.
        `claims` maps run ids to the reviewer who claimed each. Returns how many were cleared."""
        cleared = 0
        with write_transaction(self.engine) as connection:
            for run_id, reviewer in claims.items():
                cleared += connection.execute(
                    update(review_items)
                    .where(review_items.c.run_id == run_id)
                    .where(review_items.c.claimed_by == reviewer)
                    .where(review_items.c.state == "pending")
                    .values(claimed_by=None, claimed_until=None)
                ).rowcount
        return cleared

    def decide(
        self,
        run_id: str,
        reviewer: str,
        action: str,
        *,
        output: Any = None,
        reason: str | None = None,
        extra: Extra | None = None,
    ) -> Decision:
        """Approve, correct (with `output`) or reject (with `reason`), exactly once."""
        if action not in STATES:
            raise InputError(f"unknown review action {action!r}", hint="approve, correct or reject")
        now = self.now()
        with write_transaction(self.engine) as connection:
            item = self._lock_pending(connection, run_id, reviewer, now)
            final = (
                item["output"] if action == "approve" else output if action == "correct" else None
            )
            changed = connection.execute(
                update(review_items)
                .where(and_(review_items.c.run_id == run_id, review_items.c.state == "pending"))
                .values(
                    state=STATES[action],
                    decided_by=reviewer,
                    decided_at=now,
                    final_output=final,
                    reject_reason=reason,
                    claimed_by=None,
                    claimed_until=None,
                )
            ).rowcount
            if changed != 1:  # pragma: no cover - the lock above makes this unreachable
                raise DecidedError(f"run {run_id} was decided by someone else just now")
            decision = Decision(
                run_id=run_id,
                workflow=item["workflow"],
                action=action,
                status=STATES[action],
                output=final,
                reviewer=reviewer,
                reason=reason,
                decided_at=now,
            )
            self._append(connection, item, action, reviewer, now, item["output"], final, reason)
            if extra is not None:
                extra(connection, item, decision.__dict__)
        return decision

    def decision(self, run_id: str) -> Decision | None:
        """The final decision on a run, or None while it is pending (or was never queued)."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(review_items).where(review_items.c.run_id == run_id)
            ).first()
        if row is None or row.state == "pending":
            return None
        action = next(a for a, state in STATES.items() if state == row.state)
        decided_at = (
            row.decided_at if row.decided_at.tzinfo else row.decided_at.replace(tzinfo=timezone.utc)
        )
        return Decision(
            run_id=run_id,
            workflow=row.workflow,
            action=action,
            status=row.state,
            output=row.final_output,
            reviewer=row.decided_by,
            reason=row.reject_reason,
            decided_at=decided_at,
        )

    def set_hook_error(self, run_id: str, error: str) -> None:
        """Note on the latest decision that the workflow's on_decision hook failed."""
        with self.engine.begin() as connection:
            latest = connection.execute(
                select(review_decisions.c.id)
                .where(review_decisions.c.run_id == run_id)
                .order_by(review_decisions.c.id.desc())
                .limit(1)
            ).scalar()
            connection.execute(
                update(review_decisions)
                .where(review_decisions.c.id == latest)
                .values(hook_error=error)
            )

    def _lock_pending(
        self, connection: Connection, run_id: str, reviewer: str, now: datetime
    ) -> dict[str, Any]:
        row = connection.execute(
            select(review_items).where(review_items.c.run_id == run_id).with_for_update()
        ).first()
        if row is None:
            raise NotFoundError(
                f"no review item for run {run_id!r}", hint="`smallops review list` shows the queue"
            )
        item = plain_row(row._mapping)
        if item["state"] != "pending":
            raise DecidedError(
                f"run {run_id} was already {item['state']} by {item['decided_by']} "
                f"at {item['decided_at']:%Y-%m-%d %H:%M}",
                hint="nothing was changed",
            )
        holder, until = item["claimed_by"], item["claimed_until"]
        if holder and holder != reviewer and until is not None and until > now:
            raise HeldError(
                f"run {run_id} is held by {holder} until {until.astimezone():%H:%M:%S}",
                hint="pick another item, or wait for the lease to expire; nothing was changed",
            )
        return item

    def _set_claim(
        self, connection: Connection, run_id: str, reviewer: str, until: datetime
    ) -> None:
        connection.execute(
            update(review_items)
            .where(review_items.c.run_id == run_id)
            .values(claimed_by=reviewer, claimed_until=until)
        )

    def _append(
        self,
        connection: Connection,
        item: dict[str, Any],
        action: str,
        reviewer: str,
        now: datetime,
        before: Any,
        after: Any,
        reason: str | None,
    ) -> None:
        connection.execute(
            review_decisions.insert().values(
                id=uuid7(),
                run_id=item["run_id"],
                workflow=item["workflow"],
                action=action,
                reviewer=reviewer,
                decided_at=now,
                output_before=before,
                output_after=after,
                reason=reason,
                route=item["route"],
            )
        )

    @staticmethod
    def _view(mapping: Any) -> dict[str, Any]:
        return plain_row(mapping)
