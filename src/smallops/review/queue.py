"""The review queue in the database: leases, and decisions that are taken exactly once.

A reviewer claims an item under a lease (10 minutes by default) so that two reviewers never work
the same item; an expired lease puts the item back in the queue. Claims take the oldest free item
with `FOR UPDATE SKIP LOCKED` on Postgres, under SQLite's write lock otherwise. A decision is one
transaction that checks the item is still pending and not held by someone else, marks it decided
and appends the decision (who, when, output before and after) — with whatever else must happen
atomically with it (the webhook outbox, a demotion).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from smallops.errors import DecidedError as DecidedError
from smallops.errors import HeldError as HeldError
from smallops.errors import InputError, NotFoundError
from smallops.storage import review_log
from smallops.storage.db import write_transaction
from smallops.storage.review_log import QueueOrder

if TYPE_CHECKING:
    from smallops.storage.db import Connection, Engine

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


Extra = Callable[["Connection", dict[str, Any], dict[str, Any]], None]
Check = Callable[[dict[str, Any]], None]


class ReviewQueue:
    """Queue operations on one database; `now` is injectable for tests."""

    def __init__(self, engine: Engine, now: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.now = now or (lambda: datetime.now(timezone.utc))

    def resolve(self, run_id: str) -> str:
        """The full run id of a queued item from its id, its short id, or a unique start of
        either (8+ characters)."""
        with self.engine.connect() as connection:
            found = review_log.item_ids_matching(connection, run_id)
        if not found:
            raise NotFoundError(
                f"no review item for run {run_id!r}", hint="`smallops review list` shows the queue"
            )
        if len(found) > 1:
            raise InputError(f"run id {run_id!r} matches several items", hint="give more of it")
        return found[0]

    def items(
        self,
        workflow: str | None = None,
        *,
        state: str | Sequence[str] | None = "pending",
        limit: int = 100,
        order: QueueOrder | None = None,
        after: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Items, oldest first (for pending) or newest first, with their runs' inputs; several
        states (the decided ones) newest decided first; or in `order`. `after` (an item's
        `sort_key`) pages on from that item."""
        with self.engine.connect() as connection:
            return review_log.list_items(
                connection, workflow, state, limit, order=order, after=after
            )

    def counts(self) -> dict[str, int]:
        """Pending items per workflow."""
        with self.engine.connect() as connection:
            return review_log.pending_counts(connection)

    def page(
        self,
        workflow: str | None,
        *,
        state: str | Sequence[str] | None,
        limit: int,
        order: QueueOrder | None = None,
        after: Sequence[Any] | None = None,
        counts: bool = True,
    ) -> tuple[dict[str, int] | None, list[dict[str, Any]]]:
        """What the queue page shows: the pending counts per workflow (None unless `counts`)
        and `items(...)`, over one connection."""
        with self.engine.connect() as connection:
            pending = review_log.pending_counts(connection) if counts else None
            found = review_log.list_items(
                connection, workflow, state, limit, order=order, after=after
            )
        return pending, found

    def item(self, run_id: str) -> dict[str, Any]:
        """One item with its run (inputs, messages, prompt template) and its decisions."""
        with self.engine.connect() as connection:
            view = review_log.item_with_run(connection, run_id)
            if view is None:
                raise NotFoundError(
                    f"no review item for run {run_id!r}",
                    hint="`smallops review list` shows the queue",
                )
            view["history"] = review_log.decision_history(connection, run_id)
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
        run_id = self.lease_next(reviewer, workflow, lease, exclude=exclude)
        return self.item(run_id) if run_id is not None else None

    def lease_next(
        self,
        reviewer: str,
        workflow: str | None = None,
        lease: timedelta = DEFAULT_LEASE,
        *,
        exclude: Collection[str] = (),
    ) -> str | None:
        """`claim_next` without reading the item back: the run id claimed, or None."""
        now = self.now()
        with write_transaction(self.engine) as connection:
            run_id = review_log.next_free_item(connection, reviewer, now, workflow, exclude)
            if run_id is not None:
                review_log.set_claim(connection, run_id, reviewer, now + lease)
        return run_id

    def claim(self, run_id: str, reviewer: str, lease: timedelta = DEFAULT_LEASE) -> dict[str, Any]:
        """Claim one item; HeldError if someone else holds it, DecidedError if it is decided."""
        self.lease(run_id, reviewer, lease)
        return self.item(run_id)

    def lease(self, run_id: str, reviewer: str, lease: timedelta = DEFAULT_LEASE) -> None:
        """`claim` without reading the item back."""
        now = self.now()
        with write_transaction(self.engine) as connection:
            self._lock_pending(connection, run_id, reviewer, now)
            review_log.set_claim(connection, run_id, reviewer, now + lease)

    def release(self, run_id: str, reviewer: str, *, action: str = "skip") -> None:
        """Give an item back to the queue (a skip), recording who did."""
        now = self.now()
        with write_transaction(self.engine) as connection:
            item = self._lock_pending(connection, run_id, reviewer, now)
            review_log.clear_claim(connection, run_id)
            review_log.append_decision(
                connection, item, action, reviewer, now, item["output"], None, None
            )

    def unclaim(self, claims: Mapping[str, str]) -> int:
        """Clear leases (a server that stops gives back what its reviewers held), without
        recording a skip; an item decided since, or claimed by someone else, is left alone.
        `claims` maps run ids to the reviewer who claimed each. Returns how many were cleared."""
        cleared = 0
        with write_transaction(self.engine) as connection:
            for run_id, reviewer in claims.items():
                cleared += review_log.clear_claim_of(connection, run_id, reviewer)
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
        check: Check | None = None,
    ) -> Decision:
        """Approve, correct (with `output`) or reject (with `reason`), exactly once.

        The item is read once, locked: `check` sees it pending (before the lease is checked, as
        a check made ahead of the decision would) and raises to refuse the decision; `extra`
        does what must happen in the decision's transaction."""
        if action not in STATES:
            raise InputError(f"unknown review action {action!r}", hint="approve, correct or reject")
        now = self.now()
        with write_transaction(self.engine) as connection:
            item = self._lock_pending(connection, run_id, reviewer, now, check)
            final = (
                item["output"] if action == "approve" else output if action == "correct" else None
            )
            changed = review_log.mark_decided(
                connection,
                run_id,
                state=STATES[action],
                reviewer=reviewer,
                at=now,
                final_output=final,
                reason=reason,
            )
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
            review_log.append_decision(
                connection, item, action, reviewer, now, item["output"], final, reason
            )
            if extra is not None:
                extra(connection, item, decision.__dict__)
        return decision

    def decision(self, run_id: str) -> Decision | None:
        """The final decision on a run, or None while it is pending (or was never queued)."""
        with self.engine.connect() as connection:
            row = review_log.item_row(connection, run_id)
        if row is None or row["state"] == "pending":
            return None
        action = next(a for a, state in STATES.items() if state == row["state"])
        return Decision(
            run_id=run_id,
            workflow=row["workflow"],
            action=action,
            status=row["state"],
            output=row["final_output"],
            reviewer=row["decided_by"],
            reason=row["reject_reason"],
            decided_at=row["decided_at"],  # aware UTC, as every timestamp read from the log
        )

    def set_hook_error(self, run_id: str, error: str) -> None:
        """Note on the latest decision that the workflow's on_decision hook failed."""
        with self.engine.begin() as connection:
            review_log.note_hook_error(connection, run_id, error)

    def _lock_pending(
        self,
        connection: Connection,
        run_id: str,
        reviewer: str,
        now: datetime,
        check: Check | None = None,
    ) -> dict[str, Any]:
        item = review_log.lock_item(connection, run_id)
        if item is None:
            raise NotFoundError(
                f"no review item for run {run_id!r}", hint="`smallops review list` shows the queue"
            )
        if item["state"] != "pending":
            raise DecidedError(
                f"run {run_id} was already {item['state']} by {item['decided_by']} "
                f"at {item['decided_at']:%Y-%m-%d %H:%M}",
                hint="nothing was changed",
            )
        if check is not None:
            check(item)
        holder, until = item["claimed_by"], item["claimed_until"]
        if holder and holder != reviewer and until is not None and until > now:
            raise HeldError(
                f"run {run_id} is held by {holder} until {until.astimezone():%H:%M:%S}",
                hint="pick another item, or wait for the lease to expire; nothing was changed",
            )
        return item
