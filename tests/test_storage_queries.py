"""The storage queries the services call, each on a real database (SQLite, and Postgres when
configured): they answer what their names say, and keep the locks their callers rely on.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from smallops import Budget, FakeProvider, Settings, Workflow
from smallops.ids import uuid7
from smallops.resilience.status import guard_status
from smallops.storage import graduation_log, guard_log, review_log, webhook_log
from smallops.storage.db import ensure_schema, get_engine, normalise_url, write_transaction
from smallops.storage.prune import retention_cutoffs
from smallops.storage.queries import runs_of, workflows_logged
from smallops.storage.schema import (
    budget_spend,
    prompt_versions,
    review_items,
    runs,
    webhook_deliveries,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Engine:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return engine


def add_run(engine: Engine, **values: Any) -> str:
    """A run row with every required column; `values` override them."""
    row: dict[str, Any] = {
        "id": uuid7(),
        "workflow": "triage",
        "prompt_version": "v1",
        "provider": "openai",
        "model_requested": "gpt-4o-mini",
        "model_mismatch": False,
        "allow_unpinned": False,
        "status": "auto",
        "review_policy": "none",
        "fallback": "review",
        "attempt_count": 1,
        "input_tokens": 10,
        "output_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost_source": "table",
        "latency_ms": 12.0,
        "started_at": T0,
        "finished_at": T0,
        "inputs": {"text": "hi"},
        "attempts": [],
        **values,
    }
    with engine.begin() as connection:
        connection.execute(runs.insert().values(**row))
    return str(row["id"])


def add_item(engine: Engine, run_id: str | None = None, **values: Any) -> str:
    """A pending review item (of a new run unless `run_id` is given)."""
    run_id = run_id or add_run(engine)
    row: dict[str, Any] = {
        "run_id": run_id,
        "workflow": "triage",
        "prompt_version": "v1",
        "reason": "policy",
        "route": "not_graduated",
        "output": {"category": "billing"},
        "classes": ["category=billing"],
        "state": "pending",
        "created_at": T0,
        **values,
    }
    with engine.begin() as connection:
        connection.execute(review_items.insert().values(**row))
    return run_id


def decide(engine: Engine, run_id: str, action: str, at: datetime, **item: Any) -> None:
    with engine.begin() as connection:
        review_log.append_decision(
            connection,
            {"run_id": run_id, "workflow": "triage", "route": "not_graduated", **item},
            action,
            "ann",
            at,
            None,
            None,
            None,
        )


# The review queue.


def test_items_are_listed_pending_oldest_first_and_decided_newest_first(engine):
    first = add_item(engine, created_at=T0)
    second = add_item(engine, created_at=T0 + timedelta(minutes=1))
    add_item(engine, workflow="other")
    done = [add_item(engine, state="approved", created_at=T0 + DAY * m) for m in (2, 3)]
    with engine.connect() as connection:
        pending = review_log.list_items(connection, "triage", "pending", 100)
        decided = review_log.list_items(connection, "triage", "approved", 100)
        counts = review_log.pending_counts(connection)
    assert [item["run_id"] for item in pending] == [first, second]
    assert pending[0]["inputs"] == {"text": "hi"} and pending[0]["created_at"] == T0
    assert [item["run_id"] for item in decided] == done[::-1]
    assert counts == {"triage": 2, "other": 1}


def test_an_item_is_found_by_its_id_its_short_id_or_a_start_of_either(engine):
    run_id = add_item(engine)
    with engine.connect() as connection:
        assert review_log.item_ids_matching(connection, run_id) == [run_id]
        assert review_log.item_ids_matching(connection, run_id[-12:]) == [run_id]
        assert review_log.item_ids_matching(connection, run_id[:8]) == [run_id]
        assert review_log.item_ids_matching(connection, "f" * 12) == []


def test_the_next_free_item_skips_held_excluded_and_other_workflows_items(engine):
    held, skipped, free = (
        add_item(engine, created_at=T0 + timedelta(seconds=s)) for s in (0, 1, 2)
    )
    add_item(engine, workflow="other", created_at=T0 - timedelta(hours=1))
    now = T0 + timedelta(hours=1)
    with write_transaction(engine) as connection:
        review_log.set_claim(connection, held, "bob", now + timedelta(minutes=10))
        found = review_log.next_free_item(connection, "ann", now, "triage", {skipped})
        assert found == free
        assert review_log.next_free_item(connection, "bob", now, "triage", {skipped}) == held
    with write_transaction(engine) as connection:  # an expired lease frees the item
        later = now + timedelta(minutes=11)
        assert review_log.next_free_item(connection, "ann", later, "triage", ()) == held


@pytest.mark.postgres
def test_a_claim_skips_the_item_another_claim_has_locked(postgres_url, tmp_path):
    """Two reviewers claiming at once get different items: the first one's row is locked."""
    engine = get_engine(normalise_url(postgres_url, tmp_path))
    ensure_schema(engine)
    first = add_item(engine, created_at=T0)
    second = add_item(engine, created_at=T0 + timedelta(seconds=1))
    locked, release = threading.Event(), threading.Event()
    seen: list[str | None] = []

    def hold() -> None:
        with write_transaction(engine) as connection:
            seen.append(review_log.next_free_item(connection, "ann", T0, None, ()))
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    with write_transaction(engine) as connection:
        seen.append(review_log.next_free_item(connection, "bob", T0, None, ()))
    release.set()
    holder.join()
    assert seen == [first, second]


def test_a_decision_is_marked_once_and_its_history_kept_in_order(engine):
    run_id = add_item(engine)
    with write_transaction(engine) as connection:
        item = review_log.lock_item(connection, run_id)
        assert item is not None and item["state"] == "pending"
        review_log.set_claim(connection, run_id, "ann", T0 + timedelta(minutes=10))
        marked = review_log.mark_decided(
            connection,
            run_id,
            state="corrected",
            reviewer="ann",
            at=T0,
            final_output={"category": "spam"},
            reason=None,
        )
        assert marked == 1
        review_log.append_decision(
            connection, item, "correct", "ann", T0, item["output"], {"category": "spam"}, None
        )
        again = review_log.mark_decided(
            connection,
            run_id,
            state="rejected",
            reviewer="bob",
            at=T0,
            final_output=None,
            reason="late",
        )
        assert again == 0
    decide(engine, run_id, "skip", T0 + timedelta(minutes=1))
    with engine.begin() as connection:
        review_log.note_hook_error(connection, run_id, "ValueError: boom")
    with engine.connect() as connection:
        row = review_log.item_row(connection, run_id)
        history = review_log.decision_history(connection, run_id)
        view = review_log.item_with_run(connection, run_id)
        assert review_log.item_row(connection, "missing") is None
    assert row is not None and row["state"] == "corrected" and row["claimed_by"] is None
    assert row["decided_at"] == T0 and row["final_output"] == {"category": "spam"}
    assert [h["action"] for h in history] == ["correct", "skip"]
    assert [h["hook_error"] for h in history] == [None, "ValueError: boom"]
    assert history[0]["output_after"] == {"category": "spam"} and history[0]["route"]
    assert view is not None and view["inputs"] == {"text": "hi"} and view["status"] == "auto"


def test_a_lease_is_cleared_only_for_the_reviewer_who_holds_it(engine):
    run_id = add_item(engine)
    with engine.begin() as connection:
        review_log.set_claim(connection, run_id, "ann", T0)
        assert review_log.clear_claim_of(connection, run_id, "bob") == 0
        assert review_log.clear_claim_of(connection, run_id, "ann") == 1
        review_log.set_claim(connection, run_id, "bob", T0)
        review_log.clear_claim(connection, run_id)
        row = review_log.item_row(connection, run_id)
    assert row is not None and row["claimed_by"] is None and row["claimed_until"] is None


# Graduation.


def test_evidence_is_the_final_decisions_on_policy_reviews_of_one_prompt_version(engine):
    policy = add_item(engine, model_served="gpt-4o-mini-2024-07-18")
    audit = add_item(engine, reason="fallback")
    older = add_item(engine, prompt_version="v0")
    decide(engine, policy, "skip", T0)
    decide(engine, policy, "approve", T0 + timedelta(hours=1))
    decide(engine, audit, "reject", T0)
    for minutes in (1, 2):
        decide(engine, older, "correct", T0 + timedelta(minutes=minutes))
    with engine.connect() as connection:
        found = graduation_log.policy_decisions(connection, "triage", "v1")
    assert found == [
        graduation_log.Reviewed(
            "approve",
            T0 + timedelta(hours=1),
            ["category=billing"],
            "v1",
            "gpt-4o-mini-2024-07-18",
        )
    ]
    assert graduation_log.reviews_per_earlier_version(engine, "triage", "v1") == {"v0": 2}


def test_evidence_is_tallied_in_the_database_and_split_at_each_demotion(engine):
    items = [add_item(engine) for _ in range(4)] + [add_item(engine, reason="fallback")]
    decide(engine, items[0], "approve", T0)
    decide(engine, items[1], "approve", T0 + timedelta(hours=2))
    decide(engine, items[2], "reject", T0 + timedelta(hours=2))
    decide(engine, items[3], "approve", T0 + timedelta(hours=4))
    decide(engine, items[4], "approve", T0 + timedelta(hours=4))  # not a policy review
    demotions = [T0 + timedelta(hours=1), T0 + timedelta(hours=3)]
    with engine.connect() as connection:
        tallies = graduation_log.policy_decision_tallies(connection, "triage", "v1", demotions)
        none = graduation_log.policy_decision_tallies(connection, "triage", "v9", demotions)
    found = sorted((t.epoch, t.approved, t.decisions, t.first) for t in tallies)
    assert found == [
        (0, True, 1, T0),
        (1, False, 1, T0 + timedelta(hours=2)),
        (1, True, 1, T0 + timedelta(hours=2)),
        (2, True, 1, T0 + timedelta(hours=4)),
    ]
    assert {tuple(t.classes) for t in tallies} == {("category=billing",)} and none == []
    assert all(t.first.tzinfo is not None for t in tallies)


def test_graduation_events_are_read_oldest_first_and_written_under_the_lock(engine):
    def event(action: str, at: datetime, version: str = "v1") -> dict[str, Any]:
        return {
            "id": uuid7(),
            "workflow": "triage",
            "class_key": "category=billing",
            "action": action,
            "reason": "test",
            "prompt_version": version,
            "model": None,
            "reviews": 0,
            "lower_bound": None,
            "at": at,
        }

    with write_transaction(engine) as connection:
        graduation_log.lock_standings(connection)
        graduation_log.add_graduation_events(
            connection,
            [event("demote", T0 + timedelta(days=1)), event("promote", T0), event("x", T0, "v0")],
        )
    with engine.connect() as connection:
        found = graduation_log.graduation_events_of(connection, "triage", "v1")
    assert [(e["action"], e["at"]) for e in found] == [
        ("promote", T0),
        ("demote", T0 + timedelta(days=1)),
    ]
    history = graduation_log.graduation_history(engine, "triage")
    assert [e["prompt_version"] for e in history] == ["v1", "v0", "v1"]
    assert all(e["at"].tzinfo is not None for e in history)


def test_the_served_model_is_the_latest_production_output_routed_by_graduation(engine):
    add_run(engine, review_route="graduated", model_served="m-old", started_at=T0)
    add_run(engine, review_route="audit", model_served="m-new", started_at=T0 + DAY)
    add_run(engine, review_route="required", model_served="m-x", started_at=T0 + 2 * DAY)
    eval_run = {"review_route": "graduated", "model_served": "m-eval", "origin": "eval"}
    add_run(engine, **eval_run, started_at=T0 + 3 * DAY)  # eval runs are not production
    assert graduation_log.latest_graduation_model(engine, "triage", "v1") == "m-new"
    assert graduation_log.latest_graduation_model(engine, "triage", "v2") is None
    with engine.begin() as connection:
        connection.execute(
            prompt_versions.insert().values(
                id="v1",
                workflow="triage",
                template="[user]\n{{ text }}",
                model="openai:gpt-4o-mini",
                params={},
                created_at=T0,
            )
        )
        assert graduation_log.pinned_model_of(connection, "v1") == "openai:gpt-4o-mini"
        assert graduation_log.pinned_model_of(connection, "v9") is None


# The webhook outbox.


def test_a_due_delivery_is_leased_to_one_sender_and_settled_once(engine):
    run_id = add_item(engine)
    add_item(engine, workflow="other")
    now = datetime.now(timezone.utc)
    delivery = {
        "id": "msg_1",
        "run_id": run_id,
        "url": "http://127.0.0.1:9/hook",
        "payload": "{}",
        "state": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
    }
    with engine.begin() as connection:
        webhook_log.add_delivery(connection, delivery)
    assert webhook_log.waiting_per_workflow(engine) == {"triage": 1}
    until = now + timedelta(seconds=60)
    with write_transaction(engine) as connection:
        assert webhook_log.claim_due(connection, ["other"], None, now, until) is None
        claimed = webhook_log.claim_due(connection, ["triage"], run_id, now, until)
        assert claimed is not None and claimed["id"] == "msg_1"
        assert claimed["workflow"] == "triage"
    with write_transaction(engine) as connection:  # leased: not due for another sender
        assert webhook_log.claim_due(connection, ["triage"], None, now, until) is None
    assert webhook_log.release_lease(engine, "msg_1", until + timedelta(seconds=1)) == 0
    assert webhook_log.release_lease(engine, "msg_1", until) == 1
    webhook_log.settle_delivery(engine, "msg_1", {"state": "delivered", "attempts": 1})
    webhook_log.settle_delivery(engine, "msg_1", {"attempts": 9})  # delivered: left alone
    with engine.connect() as connection:
        row = connection.execute(select(webhook_deliveries)).one()
    assert (row.state, row.attempts, row.claimed_until) == ("delivered", 1, None)
    assert webhook_log.waiting_per_workflow(engine) == {}


# The guards.


def test_guard_events_are_read_newest_first_up_to_the_limit(engine):
    for minutes in range(7):
        event = {
            "id": uuid7(),
            "workflow": "triage",
            "guard": "breaker",
            "key": "openai",
            "before": "closed",
            "after": f"open-{minutes}",
            "reason": "failures",
            "at": T0 + timedelta(minutes=minutes),
        }
        guard_log.record_guard_event(engine, event)
    found = guard_log.recent_guard_events(engine, "triage")
    assert [e["after"] for e in found] == [f"open-{m}" for m in (6, 5, 4, 3, 2)]
    assert guard_log.recent_guard_events(engine, "other") == []


def test_the_budget_ledger_opens_a_period_once_and_holds_only_within_the_cap(engine):
    add_run(engine, cost_usd=0.25, started_at=T0)
    add_run(engine, cost_usd=None, started_at=T0)  # unpriced: counts as nothing
    add_run(engine, cost_usd=5.0, started_at=T0 - timedelta(days=1))  # before the period
    with write_transaction(engine) as connection:
        assert guard_log.spend_since(connection, "triage", T0) == 0.25
        assert guard_log.spend_since(connection, "other", T0) == 0.0
        assert guard_log.period_spend(connection, "triage", "day:2026-11-02", lock=True) is None
        guard_log.open_period(connection, "triage", "day:2026-11-02", 0.25, T0)
        guard_log.open_period(connection, "triage", "day:2026-11-02", 9.0, T0)  # already open
        assert guard_log.period_spend(connection, "triage", "day:2026-11-02", lock=True) == 0.25
        assert guard_log.hold_spend(connection, "triage", "day:2026-11-02", 0.75, 1.0, T0)
        assert not guard_log.hold_spend(connection, "triage", "day:2026-11-02", 0.01, 1.0, T0)
        guard_log.adjust_spend(connection, "triage", ["day:2026-11-02"], -0.5)
    with engine.connect() as connection:
        assert guard_log.period_spend(connection, "triage", "day:2026-11-02") == 0.5
        assert connection.execute(select(budget_spend.c.period)).scalars().all() == [
            "day:2026-11-02"
        ]


def test_a_periods_spend_reads_the_ledger_once_open_and_the_recorded_costs_before(engine):
    add_run(engine, cost_usd=0.25, started_at=T0)
    with engine.connect() as connection:
        assert guard_log.spent_in_period(connection, "triage", "day:2026-11-02", T0) == 0.25
    with write_transaction(engine) as connection:
        guard_log.open_period(connection, "triage", "day:2026-11-02", 3.0, T0)
    with engine.connect() as connection:
        assert guard_log.spent_in_period(connection, "triage", "day:2026-11-02", T0) == 3.0
        assert guard_log.spent_in_period(connection, "other", "day:2026-11-02", T0) == 0.0


def test_guard_status_reads_each_guard_and_the_refusals_it_logged(database_url, tmp_path):
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    wf = Workflow(
        "guarded",
        model="fake:x",
        prompt="p.prompt",
        fallback="review",
        provider=FakeProvider(lambda _: "ok"),
        rate_limit="30/minute",
        budget=Budget(daily=2.0),
        settings=Settings(root=tmp_path, database_url=database_url),
        base_dir=tmp_path,
    )
    wf.run(text="hi")
    engine = get_engine(normalise_url(database_url, tmp_path))
    now = datetime.now(timezone.utc)
    add_run(engine, workflow="guarded", error_type="budget_exhausted", started_at=now)
    long_ago = now - timedelta(hours=25)  # before the window status counts refusals in
    add_run(engine, workflow="guarded", error_type="budget_exhausted", started_at=long_ago)
    guards = wf.plan().guards
    assert guards is not None
    found = guard_status(engine, "guarded", guards, now)
    assert found.workflow == "guarded" and found.degraded == []
    assert found.breaker is not None and found.breaker["state"] == "closed"
    assert found.breaker["source"] == "process" and found.rate_limits_source == "process"
    assert found.rate_limits == [{"limit": "30 requests/minute", "remaining": 29}]
    assert found.budget[0]["cap_usd"] == 2.0
    assert [(r["error_type"], r["calls"]) for r in found.refusals] == [("budget_exhausted", 1)]
    assert found.recent_events == []


# Runs and retention.


def test_the_workflows_logged_and_one_workflows_runs(engine):
    first = add_run(engine, workflow="b")
    add_run(engine, workflow="a")
    second = add_run(engine, workflow="b")
    assert workflows_logged(engine) == ["a", "b"]
    assert [run["id"] for run in runs_of(engine, "b")] == [first, second]
    assert runs_of(engine, "b")[0]["started_at"] == T0


def test_retention_cutoffs_leave_out_workflows_without_a_retention():
    assert retention_cutoffs({"a": 30, "b": None}, T0) == {"a": T0 - timedelta(days=30)}


def test_a_time_given_in_another_zone_is_the_same_moment_on_every_engine(engine):
    """SQLite keeps times as text: a `--since` with an offset must still mean that moment."""
    from smallops.storage.queries import list_runs

    early, late = (
        add_run(engine, started_at=T0),
        add_run(engine, started_at=T0 + timedelta(hours=2)),
    )
    plus_two = timezone(timedelta(hours=2))
    since = (T0 + timedelta(hours=1)).astimezone(plus_two)  # 12:00+02:00, an hour after T0
    assert [r["id"] for r in list_runs(engine, since=since)] == [late]
    before = (T0 - timedelta(minutes=30)).astimezone(plus_two)
    assert {r["id"] for r in list_runs(engine, since=before)} == {early, late}
