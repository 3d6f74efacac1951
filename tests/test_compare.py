"""Comparing two models on one eval set (smallops.evals.compare): the paired verdict, what
changed per case and field, what was measured now, and the recommendation."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from smallops import FakeProvider, ProviderError, Settings, Workflow
from smallops.evals.compare import ModelComparison, NotCompared, Sides, compare_models, recommend
from smallops.evals.verdict import CaseOutcome, gate

from models import Triage

CASES = 12
CANDIDATE = "fake:rules-v2"


class Models:
    """Every case right, except the cases `broken` on a model; a model in `down` answers
    nothing. Counts the calls each model got."""

    def __init__(self) -> None:
        self.broken: dict[str, set[str]] = {}
        self.down: set[str] = set()
        self.calls: Counter[str] = Counter()

    def __call__(self, request: Any) -> Any:
        self.calls[request.model] += 1
        if request.model in self.down:
            return ProviderError("connection_error", "connection refused")
        case = request.user.split()[-1]
        wrong = case in self.broken.get(request.model, set())
        return {"category": "spam" if wrong else "billing", "urgency": "low", "summary": "x"}


@pytest.fixture
def models() -> Models:
    return Models()


@pytest.fixture
def pinned(tmp_path: Path, models: Models) -> Workflow[Any]:
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
    (tmp_path / "evals" / "pinned.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    return Workflow(
        "pinned",
        model="fake:rules",
        prompt="p.prompt",
        output=Triage,
        fallback="review",
        provider=FakeProvider(models),
        base_dir=tmp_path,
        retries=0,
        settings=Settings(root=tmp_path, database_url=f"sqlite:///{tmp_path}/log.db"),
    )


def _compare(pinned: Workflow[Any], **options: Any) -> ModelComparison | NotCompared:
    return asyncio.run(compare_models(pinned, CANDIDATE, **options))


def test_a_candidate_that_breaks_cases_is_a_regression_to_keep_away(pinned, models):
    models.broken["rules-v2"] = {f"c{i:02d}" for i in range(8)}
    comparison = _compare(pinned)
    assert isinstance(comparison, ModelComparison)
    assert comparison.verdict == "regression"
    assert (comparison.pinned, comparison.candidate) == ("fake:rules", CANDIDATE)
    assert comparison.fields["category"].worse == 8 and comparison.fields["category"].better == 0
    assert [case.case for case in comparison.changed_cases] == [f"c{i:02d}" for i in range(8)]
    assert comparison.changed_cases[0].pinned == 1.0 and comparison.changed_cases[0].candidate == 0
    assert comparison.pass_rate == Sides(1.0, 4 / CASES)
    assert comparison.recommendation.startswith("keep the pinned model")


def test_a_candidate_no_worse_is_a_pass_measured_on_the_calls_made_now(pinned):
    comparison = _compare(pinned)
    assert isinstance(comparison, ModelComparison)
    assert comparison.verdict == "pass" and comparison.changed_cases == []
    assert "switch the pin" in comparison.recommendation
    assert comparison.measured_calls == Sides(CASES, CASES)
    assert None not in (comparison.median_latency_ms.pinned, comparison.median_latency_ms.candidate)
    assert comparison.cost_usd == Sides(None, None)  # a fake model is unpriced


def test_answers_come_from_the_cache_only_where_both_models_have_one(pinned, models):
    _compare(pinned)
    models.calls.clear()
    again = _compare(pinned)
    assert isinstance(again, ModelComparison) and sum(models.calls.values()) == 0
    assert again.measured_calls == Sides(0, 0)
    assert again.cost_usd == again.median_latency_ms == Sides(None, None)
    fresh = _compare(pinned, use_cache=False)
    assert isinstance(fresh, ModelComparison) and fresh.measured_calls == Sides(CASES, CASES)


def test_a_model_that_does_not_answer_leaves_nothing_to_compare(pinned, models):
    models.down = {"rules-v2"}
    result = _compare(pinned)
    assert isinstance(result, NotCompared)
    assert (result.side, result.model, result.unanswered.cases) == ("candidate", CANDIDATE, CASES)

    models.down = {"rules"}
    models.calls.clear()
    result = _compare(pinned, use_cache=False)
    assert isinstance(result, NotCompared) and result.side == "pinned"
    assert models.calls["rules-v2"] == 0  # the candidate is not run for nothing


def test_the_recommendation_follows_the_verdict():
    def outcomes(worse: int, cases: int) -> list[CaseOutcome]:
        return [CaseOutcome(f"c{i}", 1.0, 0.0 if i < worse else 1.0) for i in range(cases)]

    assert gate(outcomes(1, 5)).verdict == "inconclusive"
    assert "add cases or rerun" in recommend(gate(outcomes(1, 5)))
    assert "keep the pinned model" in recommend(gate(outcomes(10, 20)))
    assert "switch the pin" in recommend(gate(outcomes(0, 20)))
