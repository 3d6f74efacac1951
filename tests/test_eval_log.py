"""The eval log in storage, on SQLite and Postgres: what the eval runner, the gate, `drift` and
`check` read and write, through real calls recorded by the log writer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from smallops import FakeProvider, Settings, Workflow
from smallops.kinds import UNJUDGED
from smallops.records import Price
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.eval_log import (
    CacheEntry,
    CacheScope,
    EvalResultRow,
    EvalRunRow,
    cached_outputs,
    evaluated_versions,
    latencies,
    output_history,
    record_verdict,
    save_eval_run,
    served_models,
)
from smallops.storage.schema import eval_results, eval_runs

from models import GOOD, Triage

SCOPE = CacheScope("triage", "v1", "rules")


def _setup(tmp_path: Path, database_url: str, model: str = "fake:rules") -> tuple[Workflow, Any]:
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    wf = Workflow(
        "triage",
        model=model,
        prompt="p.prompt",
        output=Triage,
        fallback="review",
        provider=FakeProvider(lambda _: GOOD),
        base_dir=tmp_path,
        settings=Settings(
            root=tmp_path,
            database_url=database_url,
            prices={"fake:priced": Price(input=1.0, output=10.0)},
        ),
    )
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return wf, engine


def _run_row(run_id: str, prompt_version: str = "v1", **overrides: Any) -> EvalRunRow:
    now = datetime.now(timezone.utc)
    values: dict[str, Any] = {
        "id": run_id,
        "workflow": "triage",
        "prompt_version": prompt_version,
        "model": "fake:rules",
        "dataset": "evals/triage.jsonl",
        "cases": 1,
        "repeat": 1,
        "passed": 1,
        "git_commit": None,
        "started_at": now,
        "finished_at": now,
        "summary": {"scores": {"c1": 1.0}},
    }
    return EvalRunRow(**{**values, **overrides})


def _result(run_id: str | None, cached: bool = False) -> EvalResultRow:
    return EvalResultRow("c1", 0, run_id, True, cached, GOOD, None, [])


def test_a_saved_eval_run_keeps_its_results_and_caches_each_answer_once(tmp_path, database_url):
    wf, engine = _setup(tmp_path, database_url)
    answered = [wf.run(text=f"case {i}").run_id for i in range(2)]
    wf.plan().writer.flush()
    fresh = [CacheEntry(f"key{i}", GOOD, run_id, i) for i, run_id in enumerate(answered)]

    cost = save_eval_run(
        engine, _run_row("e1"), [_result(answered[0])], measured=answered, scope=SCOPE, fresh=fresh
    )
    assert cost.cost_usd is None and cost.unpriced == 2  # a fake model has no price
    # the same answers again, and a new one: only the new one is added
    again = [*fresh, CacheEntry("key2", {"other": True}, answered[0], 2)]
    save_eval_run(
        engine, _run_row("e2"), [_result(None, True)], measured=[], scope=SCOPE, fresh=again
    )

    cached = cached_outputs(engine, SCOPE)
    assert cached == {
        "key0": (GOOD, answered[0]),
        "key1": (GOOD, answered[1]),
        "key2": ({"other": True}, answered[0]),
    }
    assert cached_outputs(engine, CacheScope("triage", "v2", "rules")) == {}
    with engine.connect() as connection:
        stored = dict(connection.execute(select(eval_runs.c.id, eval_runs.c.cost_usd)).all())
        results = connection.execute(select(eval_results.c.eval_run_id)).scalars().all()
    assert stored == {"e1": None, "e2": 0.0}  # nothing called now costs nothing
    assert sorted(results) == ["e1", "e2"]


def test_the_cost_of_an_eval_run_sums_the_priced_calls_made_now(tmp_path, database_url):
    wf, engine = _setup(tmp_path, database_url, model="fake:priced")
    answered = [wf.run(text=f"case {i}").run_id for i in range(3)]
    wf.plan().writer.flush()
    cost = save_eval_run(engine, _run_row("e1"), [], measured=answered, scope=SCOPE, fresh=[])
    assert cost.cost_usd is not None and cost.cost_usd > 0 and cost.unpriced == 0


def test_a_failed_save_leaves_nothing_behind(tmp_path, database_url):
    """One transaction: a result that cannot be written takes the run and the cache with it."""
    _, engine = _setup(tmp_path, database_url)
    duplicate = [_result(None), _result(None)]  # the same case and repeat twice
    with pytest.raises(IntegrityError):
        save_eval_run(
            engine,
            _run_row("e1"),
            duplicate,
            measured=[],
            scope=SCOPE,
            fresh=[CacheEntry("key", GOOD, "r1", 0)],
        )
    with engine.connect() as connection:
        assert connection.execute(select(eval_runs.c.id)).all() == []
    assert cached_outputs(engine, SCOPE) == {}


def test_evaluated_versions_skip_runs_that_judged_nothing(tmp_path, database_url):
    _, engine = _setup(tmp_path, database_url)
    for run_id, version in (("e1", "v1"), ("e2", "v2"), ("e3", "v3")):
        save_eval_run(engine, _run_row(run_id, version), [], measured=[], scope=SCOPE, fresh=[])
    record_verdict(engine, "e2", "regression")
    record_verdict(engine, "e3", UNJUDGED)
    assert evaluated_versions(engine) == {("triage", "v1"), ("triage", "v2")}


def test_latencies_and_served_models_read_the_recorded_runs(tmp_path, database_url):
    wf, engine = _setup(tmp_path, database_url)
    answered = [wf.run(text=f"case {i}").run_id for i in range(3)]
    wf.replace(origin="eval").run(text="eval traffic")
    wf.plan().writer.flush()

    values = latencies(engine, answered[:2])
    assert len(values) == 2 and all(value >= 0 for value in values)
    assert latencies(engine, []) == []
    [served] = served_models(engine, "triage")
    assert served["model"] == "rules" and served["calls"] == 3  # eval traffic is not served
    assert served["first_seen"].tzinfo is not None


def test_output_history_holds_the_schemas_and_the_outputs_in_the_window(tmp_path, database_url):
    wf, engine = _setup(tmp_path, database_url)
    wf.run(text="one")
    wf.plan().writer.flush()
    now = datetime.now(timezone.utc)
    history = output_history(engine, "triage", now - timedelta(days=1), now + timedelta(days=1))
    assert len(history.schemas) == 1 and "category" in str(history.schemas[0])
    [(started_at, output)] = history.outputs
    assert output == GOOD and started_at.tzinfo is not None
    later = output_history(engine, "triage", now + timedelta(days=1), now + timedelta(days=2))
    assert later.outputs == []
