"""The eval gate as a library (smallops.evals.gate): prepare, run, compare with the baseline,
record the verdict, write the baseline; a fake model through the real path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smallops import ConfigError, FakeProvider, ProviderError, Settings, Workflow
from smallops.evals.gate import GateOutcome, PreparedEval, prepare_eval, run_gate
from smallops.kinds import UNJUDGED
from smallops.storage.schema import eval_runs

from models import Triage

CASES = 12


class Model:
    """Answers every case right, except the `broken` ones; `down` answers nothing."""

    def __init__(self) -> None:
        self.broken: set[str] = set()
        self.down = False

    def __call__(self, request: Any) -> Any:
        if self.down:
            return ProviderError("connection_error", "connection refused")
        case = request.user.split()[-1]
        category = "spam" if case in self.broken else "billing"
        return {"category": category, "urgency": "low", "summary": "x"}


@pytest.fixture
def model() -> Model:
    return Model()


@pytest.fixture
def wf(tmp_path: Path, model: Model) -> Workflow[Any]:
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    (tmp_path / "evals").mkdir()
    lines = [
        {
            "id": f"c{i:02d}",
            "input": {"text": f"case c{i:02d}"},
            "expected": {"category": "billing"},
        }
        for i in range(CASES)
    ]
    (tmp_path / "evals" / "gated.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    return Workflow(
        "gated",
        model="fake:rules",
        prompt="p.prompt",
        output=Triage,
        fallback="review",
        provider=FakeProvider(model),
        base_dir=tmp_path,
        retries=0,
        settings=Settings(root=tmp_path, database_url=f"sqlite:///{tmp_path}/log.db"),
    )


def _gate(prepared: PreparedEval, **options: Any) -> GateOutcome:
    return asyncio.run(run_gate(prepared, use_cache=False, **options))


def _stored_verdict(wf: Workflow[Any], eval_run_id: str) -> str | None:
    with wf.plan().writer.store.engine.connect() as connection:
        verdict: str | None = connection.execute(
            select(eval_runs.c.verdict).where(eval_runs.c.id == eval_run_id)
        ).scalar_one()
    return verdict


def test_prepare_says_what_a_run_may_cost_before_anything_is_spent(wf, model):
    prepared = prepare_eval(wf, repeat=3)
    assert len(prepared.cases) == CASES and prepared.calls == 3 * CASES
    assert prepared.estimate_usd is None and prepared.tokens > 0  # a fake model is unpriced
    assert prepared.baseline is None and not prepared.ci
    assert prepared.baseline_path.name == "gated.baseline.json"


def test_the_gate_needs_a_baseline_to_compare_with(wf):
    with pytest.raises(ConfigError) as caught:
        prepare_eval(wf, ci=True)
    assert "no baseline" in caught.value.message
    assert caught.value.hint and "--update-baseline" in caught.value.hint


def test_a_run_without_ci_records_no_verdict_and_writes_the_baseline_when_asked(wf):
    prepared = prepare_eval(wf)
    outcome = _gate(prepared, update_baseline=True)
    assert outcome.gate is None and outcome.unanswered is None and outcome.verdict is None
    assert outcome.baseline_written == prepared.baseline_path and prepared.baseline_path.exists()
    assert outcome.run.passed == CASES
    assert _stored_verdict(wf, outcome.run.id) is None


def test_the_gate_passes_an_unchanged_model_and_catches_a_broken_one(wf, model):
    _gate(prepare_eval(wf), update_baseline=True)
    same = _gate(prepare_eval(wf, ci=True))
    assert same.verdict == "pass" and same.gate is not None and same.gate.worse == 0
    assert _stored_verdict(wf, same.run.id) == "pass"
    assert same.baseline_written is None

    model.broken = {f"c{i:02d}" for i in range(8)}
    worse = _gate(prepare_eval(wf, ci=True))
    assert worse.verdict == "regression" and worse.gate is not None and worse.gate.worse == 8
    assert _stored_verdict(wf, worse.run.id) == "regression"


def test_a_run_the_model_did_not_answer_is_unjudged_and_never_a_baseline(wf, model):
    _gate(prepare_eval(wf), update_baseline=True)
    baseline = prepare_eval(wf).baseline_path.read_text()
    model.down = True
    outcome = _gate(prepare_eval(wf, ci=True), update_baseline=True)
    assert outcome.unanswered is not None and outcome.unanswered.cases == CASES
    assert outcome.gate is None and outcome.verdict == UNJUDGED
    assert outcome.baseline_written is None
    assert prepare_eval(wf).baseline_path.read_text() == baseline
    assert _stored_verdict(wf, outcome.run.id) == UNJUDGED


def test_the_progress_callback_counts_every_case_and_repeat(wf):
    done: list[None] = []
    _gate(prepare_eval(wf, repeat=2), on_done=lambda: done.append(None))
    assert len(done) == 2 * CASES
