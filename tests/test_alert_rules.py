"""The alert rules (smallops.alerts.rules) over a real log on SQLite and Postgres, with a frozen
clock: runs written through the log writer's store (rollups and all) with controlled times and
costs, guard events, review items, eval runs, the spool and the quarantine; then `evaluate`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from smallops import Budget
from smallops.alert_config import AlertSettings, parse_alerts
from smallops.alerts import rules
from smallops.alerts.model import Finding
from smallops.alerts.rules import Context, Evaluation, evaluate
from smallops.config import Settings
from smallops.ids import uuid7
from smallops.kinds import RULES
from smallops.providers.fake import FakeProvider
from smallops.storage import guard_log
from smallops.storage.db import ensure_schema, get_engine, log_database, normalise_url
from smallops.storage.eval_log import CacheScope, EvalRunRow, record_verdict, save_eval_run
from smallops.storage.schema import PROMPT_COLUMNS, REVIEW_COLUMNS, RUN_COLUMNS
from smallops.storage.spool import Spool, spool_folder
from smallops.storage.storable import json_text
from smallops.storage.store import RowBatch, RowStore, land
from smallops.storage.writer import quarantine_for
from smallops.workflow import Workflow

from models import GOOD, Triage

PINNED = "rules"  # the model of "fake:rules"
UPGRADED = "rules-2027-01-15"
SECONDARY = "other-model"
NOW = datetime(2026, 12, 9, 12, 0, tzinfo=timezone.utc)  # a Wednesday noon, ISO week 2026-W50
MONDAY = datetime(2026, 12, 7, tzinfo=timezone.utc)
WEEK_END = datetime(2026, 12, 13, 23, 30, tzinfo=timezone.utc)  # Sunday night, the same week
WEEK = timedelta(days=7)


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Engine:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return engine


def make(tmp_path: Path, database_url: str, name: str = "triage", **options: Any) -> Workflow[Any]:
    prompt = tmp_path / "triage.prompt"
    if not prompt.exists():
        prompt.write_text("[user]\n{{ text }}")
    return Workflow(
        name,
        model=f"fake:{PINNED}",
        prompt="triage.prompt",
        output=Triage,
        provider=FakeProvider(lambda _: GOOD),
        base_dir=tmp_path,
        retries=0,
        fallback="review",
        settings=options.pop("settings", None)
        or Settings(root=tmp_path, database_url=database_url),
        **options,
    )


def run_row(
    workflow: str,
    started: datetime,
    *,
    cost: float | None = 0.0,
    status: str = "auto",
    error: str | None = None,
    origin: str | None = "app",
    served: str | None = PINNED,
    requested: str = PINNED,
    version: str = "v1",
    output: Any = None,
) -> tuple[Any, ...]:
    """A `runs` row as the log writer lands it (RUN_COLUMNS order, epoch-second times)."""
    values: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    at = started.timestamp()
    values.update(
        id=uuid7(),
        workflow=workflow,
        prompt_version=version,
        provider="fake",
        model_requested=requested,
        model_served=served,
        model_mismatch=served is not None and served != requested,
        allow_unpinned=False,
        status=status,
        error_type=error,
        review_policy="none",
        origin=origin,
        fallback="review",
        attempt_count=1,
        input_tokens=100,
        output_tokens=10,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_usd=cost,
        cost_source="table",
        latency_ms=100.0,
        started_at=at,
        finished_at=at + 0.1,
        inputs="{}",
        output=None if output is None else json_text(output, set()),
        attempts="[]",
    )
    return tuple(values[name] for name in RUN_COLUMNS)


def review_row(run: Sequence[Any], created: datetime) -> tuple[Any, ...]:
    """The pending review item of a run, as the writer lands it."""
    run_values = dict(zip(RUN_COLUMNS, run, strict=True))
    values: dict[str, Any] = dict.fromkeys(REVIEW_COLUMNS)
    values.update(
        run_id=run_values["id"],
        workflow=run_values["workflow"],
        prompt_version=run_values["prompt_version"],
        model_served=run_values["model_served"],
        reason="sampled",
        route="sampled",
        classes="{}",
        state="pending",
        created_at=created.timestamp(),
    )
    return tuple(values[name] for name in REVIEW_COLUMNS)


def write(
    engine: Engine,
    runs: Iterable[tuple[Any, ...]],
    reviews: Iterable[tuple[Any, ...]] = (),
    prompts: Iterable[tuple[Any, ...]] = (),
) -> None:
    """Through the log writer's store: runs, their rollups, review items and prompt versions."""
    store = RowStore(engine)
    refused: list[str] = []
    batch = RowBatch(runs=list(runs), reviews=list(reviews), prompts=list(prompts))
    land(store, batch, lambda _batch, why: refused.append(why))
    store.close()
    assert refused == []


def check(
    engine: Engine,
    workflows: Sequence[Workflow[Any]],
    now: datetime = NOW,
    settings: AlertSettings | None = None,
    spool_dir: Path | None = None,
) -> Evaluation:
    context = Context(
        engine=engine,
        workflows={wf.name: wf for wf in workflows},
        settings=settings or AlertSettings(),
        spool_dir=spool_dir,
        now=now,
    )
    return evaluate(context)


def firing(evaluation: Evaluation, rule: str) -> list[Finding]:
    return [finding for finding in evaluation.findings if finding.rule == rule]


def spread(workflow: str, start: datetime, total: float, n: int, hours: float, **kw: Any) -> list:
    """`n` runs costing `total` together, one every `hours` hours from `start`."""
    return [
        run_row(workflow, start + timedelta(hours=i * hours), cost=total / n, **kw)
        for i in range(n)
    ]


def earlier_weeks(workflow: str, totals: Sequence[float]) -> list:
    """A week's worth of cost in each of the weeks before this one (totals[0]: last week)."""
    rows = []
    for k, total in enumerate(totals, start=1):
        rows += spread(workflow, MONDAY - k * WEEK + timedelta(hours=1), total, 10, 15)
    return rows


# --- cost_surprise -------------------------------------------------------------------------


def test_a_week_well_above_the_four_before_is_one_cost_surprise(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    write(engine, earlier_weeks("triage", [9.5, 10.5, 10.0, 10.0]))
    write(engine, spread("triage", MONDAY, 25.0, 25, 6))  # the last one: Sunday 00:00
    evaluation = check(engine, [wf], now=WEEK_END)
    [finding] = firing(evaluation, "cost_surprise")
    assert finding.workflow == "triage" and finding.severity == "warning"
    assert finding.period == "2026-W50"
    assert finding.dedup_key == "smallops:cost_surprise:triage:2026-W50"
    assert finding.figures["cost_usd"] == pytest.approx(25.0)
    assert finding.figures["mean_usd"] == pytest.approx(10.0)
    assert finding.figures["change"] == pytest.approx(1.5)
    assert finding.figures["weeks_compared"] == 4
    assert finding.figures["unpriced_calls"] == 0
    assert finding.link == "/workflows/triage"
    assert "$25.00" in finding.summary and "$10.00" in finding.summary
    assert ("cost_surprise", "triage") in evaluation.checked
    assert evaluation.problems == []


def test_a_week_a_little_above_the_mean_is_no_surprise(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    write(engine, earlier_weeks("triage", [9.5, 10.5, 10.0, 10.0]))
    write(engine, spread("triage", MONDAY, 12.0, 12, 12))
    evaluation = check(engine, [wf], now=WEEK_END)
    assert firing(evaluation, "cost_surprise") == []
    assert ("cost_surprise", "triage") in evaluation.checked


def test_both_the_increase_and_the_dollar_floor_must_be_passed(engine, tmp_path, database_url):
    """$1.60 against a $1 mean is +60%, but only $0.60 above it: under the $5 floor."""
    wf = make(tmp_path, database_url)
    write(engine, earlier_weeks("triage", [1.0] * 4))
    write(engine, spread("triage", MONDAY, 1.6, 4, 6))
    assert firing(check(engine, [wf], now=WEEK_END), "cost_surprise") == []
    settings = parse_alerts({"rules": {"cost_surprise": {"floor_usd": 0.5}}})
    [finding] = firing(check(engine, [wf], now=WEEK_END, settings=settings), "cost_surprise")
    assert finding.figures["change"] == pytest.approx(0.6)


def test_mid_week_compares_with_the_same_point_of_earlier_weeks(engine, tmp_path, database_url):
    """Wednesday noon: the earlier weeks' $10 before their Wednesday noon is the mean; their
    $100 from Wednesday noon on (the hour at noon included) is not counted."""
    wf = make(tmp_path, database_url)
    rows = []
    for k in range(1, 5):
        monday = MONDAY - k * WEEK
        rows += spread("triage", monday, 10.0, 10, 5)  # Monday 00:00 to Tuesday 21:00
        rows += spread("triage", monday + timedelta(days=2, hours=12), 100.0, 10, 8)
    rows += spread("triage", MONDAY, 25.0, 10, 5)  # this week, up to Tuesday 21:00
    write(engine, rows)
    evaluation = check(engine, [wf], now=NOW)
    [finding] = firing(evaluation, "cost_surprise")
    assert finding.figures["mean_usd"] == pytest.approx(10.0)
    assert finding.figures["cost_usd"] == pytest.approx(25.0)
    assert finding.period == "2026-W50"
    assert "Wed 12:00" in finding.summary
    # At the week's end the comparison is with the full weeks: $110 each, so $25 is nothing.
    assert firing(check(engine, [wf], now=WEEK_END), "cost_surprise") == []


def test_eval_traffic_does_not_count(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    rows = earlier_weeks("triage", [10.0] * 4)
    rows += spread("triage", MONDAY - 2 * WEEK, 5.0, 5, 10, origin="eval")
    rows += spread("triage", MONDAY, 12.0, 12, 10)
    rows += spread("triage", MONDAY, 40.0, 20, 5, origin="eval")  # an eval run this week
    rows += spread("triage", MONDAY, 1.0, 2, 5, origin="fallback", served=SECONDARY)
    write(engine, rows)
    evaluation = check(engine, [wf], now=WEEK_END)
    assert firing(evaluation, "cost_surprise") == []
    settings = parse_alerts({"rules": {"cost_surprise": {"increase": 0.25, "floor_usd": 1}}})
    # $13 (the secondary model is paid for) against $10: +30%
    [finding] = firing(check(engine, [wf], now=WEEK_END, settings=settings), "cost_surprise")
    assert finding.figures["cost_usd"] == pytest.approx(13.0)
    assert finding.figures["mean_usd"] == pytest.approx(10.0)


def test_unpriced_calls_are_never_counted_as_zero(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    rows = earlier_weeks("triage", [10.0] * 4)
    rows += [run_row("triage", MONDAY + timedelta(hours=i), cost=None) for i in range(30)]
    write(engine, rows)
    assert firing(check(engine, [wf], now=WEEK_END), "cost_surprise") == []  # cost unknown
    write(engine, spread("triage", MONDAY + timedelta(days=1), 30.0, 3, 1))
    [finding] = firing(check(engine, [wf], now=WEEK_END), "cost_surprise")
    assert finding.figures["unpriced_calls"] == 30
    assert "30 calls unpriced" in finding.summary


def test_a_new_workflow_is_compared_with_the_weeks_it_ran(engine, tmp_path, database_url):
    """Two weeks of history: the mean is over those two, not over four with two empty."""
    wf = make(tmp_path, database_url)
    write(engine, earlier_weeks("triage", [10.0, 10.0]))
    write(engine, spread("triage", MONDAY, 14.0, 7, 20))
    evaluation = check(engine, [wf], now=WEEK_END)
    assert firing(evaluation, "cost_surprise") == []  # $14 against $10, not against $5


# --- budget --------------------------------------------------------------------------------


def test_a_budget_near_its_cap_warns_and_at_its_cap_is_critical(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url, budget=Budget(daily=10.0, monthly=100.0))
    # today: $8.50 from the recorded runs (nobody opened the period's ledger row yet)
    write(engine, spread("triage", NOW - timedelta(hours=10), 8.5, 5, 1))
    evaluation = check(engine, [wf])
    [near] = firing(evaluation, "budget")
    assert near.period == "day:2026-12-09" and near.severity == "warning"
    assert near.figures == {"spent_usd": 8.5, "cap_usd": 10.0, "used": 0.85}
    assert "daily budget 85% used" in near.summary
    assert near.dedup_key == "smallops:budget:triage:day:2026-12-09"
    # the month's ledger row says the cap is spent
    with engine.begin() as connection:
        guard_log.open_period(connection, "triage", "month:2026-12", 100.0, NOW)
    found = {f.period: f for f in firing(check(engine, [wf]), "budget")}
    assert set(found) == {"day:2026-12-09", "month:2026-12"}
    assert found["month:2026-12"].severity == "critical"
    assert found["month:2026-12"].figures["used"] == 1.0
    assert found["day:2026-12-09"].severity == "warning"
    # the next day, the daily period is a new one with nothing spent
    later = check(engine, [wf], now=NOW + timedelta(days=1))
    assert [f.period for f in firing(later, "budget")] == ["month:2026-12"]


def test_budget_below_near_and_no_budget_are_checked_not_firing(engine, tmp_path, database_url):
    capped = make(tmp_path, database_url, name="capped", budget=Budget(daily=10.0))
    free = make(tmp_path, database_url, name="free")
    write(engine, spread("capped", NOW - timedelta(hours=2), 7.9, 2, 1))
    write(engine, spread("free", NOW - timedelta(hours=2), 70.0, 2, 1))
    evaluation = check(engine, [capped, free])
    assert firing(evaluation, "budget") == []
    assert {("budget", "capped"), ("budget", "free")} <= evaluation.checked


# --- breaker_open --------------------------------------------------------------------------


def breaker_event(engine: Engine, wf: Workflow[Any], before: str, after: str, at: datetime) -> None:
    guards = wf.plan().guards
    assert guards is not None
    guard_log.record_guard_event(
        engine,
        {
            "id": uuid7(),
            "workflow": wf.name,
            "guard": "breaker",
            "key": guards.breaker_key,
            "before": before,
            "after": after,
            "reason": "12 of 20 calls failed in 30 s" if after == "open" else "3 probes succeeded",
            "at": at,
        },
    )


def test_a_breaker_open_event_fires_and_a_later_closed_one_resolves(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    assert firing(check(engine, [wf]), "breaker_open") == []  # no event: closed
    breaker_event(engine, wf, "closed", "open", NOW - timedelta(minutes=10))
    evaluation = check(engine, [wf])
    [finding] = firing(evaluation, "breaker_open")
    assert finding.severity == "critical" and finding.period == ""
    assert finding.dedup_key == "smallops:breaker_open:triage"
    assert finding.figures["state"] == "open" and finding.figures["source"] == "events"
    assert finding.figures["since"] == (NOW - timedelta(minutes=10)).isoformat()
    assert "12 of 20 calls failed" in finding.summary
    breaker_event(engine, wf, "open", "half_open", NOW - timedelta(minutes=9))
    [probing] = firing(check(engine, [wf]), "breaker_open")
    assert probing.figures["state"] == "half_open"
    breaker_event(engine, wf, "half_open", "closed", NOW - timedelta(minutes=5))
    evaluation = check(engine, [wf])
    assert firing(evaluation, "breaker_open") == []
    assert ("breaker_open", "triage") in evaluation.checked
    # an event after the (frozen) time of the check is not read
    breaker_event(engine, wf, "closed", "open", NOW + timedelta(minutes=1))
    assert firing(check(engine, [wf]), "breaker_open") == []


def test_an_unreachable_shared_breaker_is_a_problem_not_a_resolve(engine, tmp_path, database_url):
    pytest.importorskip("redis")
    # a Redis that refuses connections: nobody listens on port 1
    shared = Settings(root=tmp_path, database_url=database_url, redis_url="redis://127.0.0.1:1/0")
    wf = make(tmp_path, database_url, settings=shared)
    evaluation = check(engine, [wf])
    assert ("breaker_open", "triage") not in evaluation.checked
    [problem] = [line for line in evaluation.problems if line.startswith("breaker_open")]
    assert "triage" in problem and "Redis at redis://127.0.0.1:1/0 unreachable" in problem
    assert "this process" not in problem
    assert ("error_spike", "triage") in evaluation.checked


# --- error_spike, refusal_spike, fallback_spike --------------------------------------------


def last_hour(workflow: str, n: int, **kw: Any) -> list:
    return [
        run_row(workflow, NOW - timedelta(minutes=50) + timedelta(seconds=i), **kw)
        for i in range(n)
    ]


def test_two_failures_in_three_calls_do_not_fire(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    rows = last_hour("triage", 1)
    rows += last_hour("triage", 2, status="failed", error="server_error", served=None)
    # outside the window, or eval traffic: not counted
    rows += [
        run_row("triage", NOW - timedelta(hours=2), status="failed", error="server_error")
        for _ in range(100)
    ]
    rows += last_hour("triage", 50, status="failed", error="server_error", origin="eval")
    write(engine, rows)
    evaluation = check(engine, [wf])
    assert [f for f in evaluation.findings if f.rule.endswith("_spike")] == []
    assert {("error_spike", "triage"), ("refusal_spike", "triage")} <= evaluation.checked


def test_forty_errors_in_two_hundred_calls_fire(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    rows = last_hour("triage", 160)
    rows += last_hour("triage", 40, status="failed", error="server_error", served=None)
    write(engine, rows)
    evaluation = check(engine, [wf])
    [finding] = [f for f in evaluation.findings if f.rule.endswith("_spike")]
    assert finding.rule == "error_spike" and finding.severity == "error"
    assert finding.figures["calls"] == 200 and finding.figures["count"] == 40
    assert finding.figures["rate"] == 0.2 and finding.figures["threshold"] == 0.1
    assert 0.1 < finding.figures["lower_bound"] < 0.2
    assert finding.summary.startswith("triage: 40 errors in 200 calls over the last 1 h")


def test_twelve_errors_in_two_hundred_calls_are_within_the_noise(engine, tmp_path, database_url):
    """24 in 200 is 12%, above the 10% rate, but not surely: the lower bound is below it."""
    wf = make(tmp_path, database_url)
    write(
        engine, last_hour("triage", 176) + last_hour("triage", 24, status="failed", error="timeout")
    )
    assert firing(check(engine, [wf]), "error_spike") == []


def test_refusal_and_fallback_spikes(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    rows = last_hour("triage", 100)
    rows += last_hour("triage", 30, status="failed", error="refused", served=PINNED)
    rows += last_hour("triage", 70, status="fallback_secondary", error="server_error", served=None)
    rows += last_hour("triage", 70, origin="fallback", served=SECONDARY, requested=SECONDARY)
    write(engine, rows)
    found = {f.rule: f for f in check(engine, [wf]).findings if f.rule.endswith("_spike")}
    assert set(found) == {"error_spike", "refusal_spike", "fallback_spike"}
    assert found["refusal_spike"].figures["count"] == 30
    assert found["refusal_spike"].figures["calls"] == 200  # the secondary's calls are not
    assert found["fallback_spike"].figures["count"] == 70
    assert found["error_spike"].figures["count"] == 100
    assert found["refusal_spike"].severity == "warning"


# --- review_backlog ------------------------------------------------------------------------


def test_a_review_item_older_than_its_service_level_fires(engine, tmp_path, database_url):
    triage = make(tmp_path, database_url)
    refunds = make(tmp_path, database_url, name="refunds")
    old = run_row("triage", NOW - timedelta(hours=5))
    new = run_row("triage", NOW - timedelta(minutes=10))
    fresh = run_row("refunds", NOW - timedelta(hours=1))
    reviews = [
        review_row(old, NOW - timedelta(hours=5)),
        review_row(new, NOW - timedelta(minutes=10)),
        review_row(fresh, NOW - timedelta(hours=1)),
    ]
    write(engine, [old, new, fresh], reviews)
    evaluation = check(engine, [triage, refunds])
    [finding] = firing(evaluation, "review_backlog")
    assert finding.workflow == "triage"
    assert finding.figures == {"pending": 2, "oldest_age_s": 5 * 3600, "sla_s": 4 * 3600.0}
    assert finding.link == "/?workflow=triage"
    assert "5.0 h" in finding.summary and "4 h" in finding.summary
    assert ("review_backlog", "refunds") in evaluation.checked
    # a workflow's own service level
    settings = parse_alerts(
        {"workflows": {"refunds": {"rules": {"review_backlog": {"sla": "30m"}}}}}
    )
    evaluation = check(engine, [triage, refunds], settings=settings)
    assert {f.workflow for f in firing(evaluation, "review_backlog")} == {"triage", "refunds"}


# --- model_mismatch ------------------------------------------------------------------------


def test_a_model_other_than_the_pinned_one_is_a_mismatch(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    long_name = "m" * 150
    rows = last_hour("triage", 30)
    rows += last_hour("triage", 5, served=UPGRADED)
    rows += [run_row("triage", NOW - timedelta(hours=20), served=long_name)]
    rows += last_hour("triage", 4, origin="fallback", served=SECONDARY)  # the secondary model
    rows += last_hour("triage", 4, origin="eval", served="eval-model")
    rows += [run_row("triage", NOW - timedelta(hours=30), served="an-old-one")]  # outside 24 h
    write(engine, rows)
    evaluation = check(engine, [wf])
    found = {f.figures["served"]: f for f in firing(evaluation, "model_mismatch")}
    assert set(found) == {UPGRADED, long_name}
    upgraded = found[UPGRADED]
    assert upgraded.period == UPGRADED
    assert upgraded.dedup_key == f"smallops:model_mismatch:triage:{UPGRADED}"
    assert upgraded.figures["calls"] == 5 and upgraded.figures["pinned"] == PINNED
    assert f"answered by {UPGRADED}" in upgraded.summary
    assert found[long_name].period == "m" * 100


# --- output_shift --------------------------------------------------------------------------


def prompt_row(workflow: str) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "id": "v1",
        "workflow": workflow,
        "template": "[user]\n{{ text }}",
        "output_schema": json_text(
            {"properties": {"category": {"enum": ["billing", "spam"]}, "note": {"type": "string"}}},
            set(),
        ),
        "model": PINNED,
        "params": "{}",
        "created_at": time.time(),
    }
    return tuple(values[name] for name in PROMPT_COLUMNS)


def test_an_output_distribution_shift_fires_with_the_field_and_p_value(
    engine, tmp_path, database_url
):
    wf = make(tmp_path, database_url)
    rows = [
        run_row("triage", NOW - timedelta(days=8), output={"category": "billing", "note": "x"})
        for _ in range(30)
    ]
    rows += [
        run_row(
            "triage",
            NOW - timedelta(hours=3),
            output={"category": "billing" if i % 4 == 0 else "spam", "note": "secret words"},
        )
        for i in range(30)
    ]
    write(engine, rows, prompts=[prompt_row("triage")])
    [finding] = firing(check(engine, [wf]), "output_shift")
    assert finding.period == "2026-W50"
    assert finding.figures["fields"] == "category"
    assert finding.figures["p_value.category"] < 0.001
    assert "secret words" not in repr(finding)


# --- eval_regression -----------------------------------------------------------------------


def eval_run(engine: Engine, version: str, verdict: str | None, started: datetime) -> str:
    run_id = uuid7()
    save_eval_run(
        engine,
        EvalRunRow(
            id=run_id,
            workflow="triage",
            prompt_version=version,
            model=f"fake:{PINNED}",
            dataset="evals/triage.jsonl",
            cases=20,
            repeat=1,
            passed=14,
            git_commit=None,
            started_at=started,
            finished_at=started + timedelta(minutes=1),
            summary={},
        ),
        [],
        measured=[],
        scope=CacheScope("triage", version, PINNED),
        fresh=[],
    )
    if verdict is not None:
        record_verdict(engine, run_id, verdict)
    return run_id


def test_an_eval_regression_fires_until_a_later_run_passes(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    eval_run(engine, "v1", "pass", NOW - timedelta(days=2))
    assert firing(check(engine, [wf]), "eval_regression") == []
    bad = eval_run(engine, "v2", "regression", NOW - timedelta(days=1))
    eval_run(engine, "v2", None, NOW - timedelta(hours=5))  # without --ci: judged nothing
    eval_run(engine, "v2", "unjudged", NOW - timedelta(hours=4))  # cases unanswered
    [finding] = firing(check(engine, [wf]), "eval_regression")
    assert finding.period == "v2" and finding.severity == "error"
    assert finding.figures["eval_run"] == bad and finding.figures["passed"] == 14
    assert finding.link == f"/evals/{bad}"
    eval_run(engine, "v3", "pass", NOW - timedelta(hours=1))
    evaluation = check(engine, [wf])
    assert firing(evaluation, "eval_regression") == []
    assert ("eval_regression", "triage") in evaluation.checked


# --- log_backlog ---------------------------------------------------------------------------


def test_records_in_the_spool_or_the_quarantine_fire_for_the_project(
    engine, tmp_path, database_url
):
    wf = make(tmp_path, database_url)
    settings = wf.settings
    evaluation = check(engine, [wf], spool_dir=settings.spool_dir)
    assert firing(evaluation, "log_backlog") == []
    assert ("log_backlog", "*") in evaluation.checked
    quarantine = quarantine_for(settings.log)  # where the writer sets refused records aside
    quarantine.add(RowBatch(runs=[run_row("triage", NOW)]), "the database refused it")
    quarantine.close()
    [finding] = firing(check(engine, [wf], spool_dir=settings.spool_dir), "log_backlog")
    assert finding.workflow == "*" and finding.dedup_key == "smallops:log_backlog:*"
    assert finding.figures == {"spool_files": 0, "spool_bytes": 0, "quarantined": 1}
    assert finding.severity == "error"
    url, _ = log_database(settings.log)
    spool = Spool(spool_folder(settings.spool_dir, url))  # where the writer spools
    spool.append(RowBatch(runs=[run_row("triage", NOW), run_row("triage", NOW)]))
    spool.close()
    [finding] = firing(check(engine, [wf], spool_dir=settings.spool_dir), "log_backlog")
    assert finding.figures["spool_files"] == 1 and finding.figures["spool_bytes"] > 0
    assert finding.figures["quarantined"] == 1
    assert "1 spool files" in finding.summary


# --- disabled rules, failing rules ---------------------------------------------------------


def test_a_disabled_rule_is_checked_and_does_not_fire(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    other = make(tmp_path, database_url, name="other")
    rows = last_hour("triage", 160) + last_hour("triage", 40, status="failed", error="timeout")
    rows += last_hour("other", 160) + last_hour("other", 40, status="failed", error="timeout")
    write(engine, rows)
    settings = parse_alerts(
        {"workflows": {"triage": {"rules": {"error_spike": {"enabled": False}}}}}
    )
    evaluation = check(engine, [wf, other], settings=settings)
    assert [f.workflow for f in firing(evaluation, "error_spike")] == ["other"]
    assert ("error_spike", "triage") in evaluation.checked
    # the project-wide switch
    settings = parse_alerts({"rules": {"error_spike": {"enabled": False}}})
    evaluation = check(engine, [wf, other], settings=settings)
    assert firing(evaluation, "error_spike") == []
    assert {("error_spike", "triage"), ("error_spike", "other")} <= evaluation.checked


def test_a_rule_that_fails_is_a_problem_and_the_others_are_checked(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    other = make(tmp_path, database_url, name="other")
    write(
        engine, last_hour("triage", 160) + last_hour("triage", 40, status="failed", error="timeout")
    )
    with engine.begin() as connection:  # the review queue is gone: its reads fail
        connection.exec_driver_sql("DROP TABLE review_items")
    evaluation = check(engine, [wf, other], spool_dir=tmp_path / "spool")
    [problem] = evaluation.problems  # one line for both workflows
    assert problem.startswith("review_backlog could not be checked for other, triage: ")
    assert "the log database" in problem
    assert not {("review_backlog", "triage"), ("review_backlog", "other")} & evaluation.checked
    every_other = {(rule, name) for rule in RULES for name in ("triage", "other")}
    every_other -= {("review_backlog", "triage"), ("review_backlog", "other")}
    every_other -= {("log_backlog", "triage"), ("log_backlog", "other")}
    assert every_other | {("log_backlog", "*")} == evaluation.checked
    assert [f.rule for f in evaluation.findings] == ["error_spike"]


def test_an_unexpected_fault_in_one_rule_is_a_problem_line(
    engine, tmp_path, database_url, monkeypatch, caplog
):
    wf = make(tmp_path, database_url)

    def broken(*_args: Any) -> list[Finding]:
        raise ZeroDivisionError("a fault")

    monkeypatch.setitem(rules.CHECKS, "model_mismatch", broken)
    evaluation = check(engine, [wf])
    assert evaluation.problems == [
        "model_mismatch could not be checked for triage: unexpected ZeroDivisionError: a fault"
    ]
    assert ("model_mismatch", "triage") not in evaluation.checked
    assert ("cost_surprise", "triage") in evaluation.checked
    assert any(record.exc_info for record in caplog.records)  # the traceback is logged


def test_a_bad_threshold_is_a_problem_for_that_rule_only(engine, tmp_path, database_url):
    wf = make(tmp_path, database_url)
    settings = AlertSettings(rules={"review_backlog": {"sla": "soon"}})  # not checked by parse
    evaluation = check(engine, [wf], settings=settings)
    [problem] = evaluation.problems
    assert problem.startswith("review_backlog could not be checked for triage: review_backlog.sla")
    assert ("budget", "triage") in evaluation.checked


def test_no_finding_carries_prompt_or_output_text(engine, tmp_path, database_url):
    """Every rule firing at once: the findings hold names and figures, no run content."""
    wf = make(tmp_path, database_url, budget=Budget(daily=1.0))
    rows = earlier_weeks("triage", [1.0] * 4)
    words = {"text": "PRIVATE-INPUT", "category": "spam", "note": "PRIVATE-OUTPUT"}
    rows += [
        run_row(
            "triage",
            NOW - timedelta(minutes=30),
            status="failed",
            error="refused",
            served=UPGRADED,
            cost=1.0,
            output=words,
        )
        for _ in range(40)
    ]
    write(engine, rows)
    evaluation = check(engine, [wf])
    assert {f.rule for f in evaluation.findings} >= {
        "cost_surprise",
        "budget",
        "error_spike",
        "refusal_spike",
        "model_mismatch",
    }
    for finding in evaluation.findings:
        assert "PRIVATE" not in repr(finding)
        assert all(
            value is None or isinstance(value, (int, float, str, bool))
            for value in finding.figures.values()
        )
        assert "\n" not in finding.summary
