"""Comparing two models on one eval set: a model upgrade tested like a dependency upgrade.

Both models are measured the same way in one run: an answer comes from the eval cache only
where both models have one cached, so the calls made are the same cases on both sides, and cost
and latency are compared over those calls only (answers from the cache were not measured now).
The paired gate of `verdict` decides, and the recommendation follows from its verdict.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from smallops.evals.dataset import workflow_cases
from smallops.evals.runner import EvalRun, Unanswered, cached_answers, run_eval
from smallops.evals.verdict import CaseOutcome, GateResult, Verdict, gate
from smallops.storage.eval_log import latencies

if TYPE_CHECKING:  # the workflow is handed in; this layer never imports it
    from smallops.workflow import Workflow

Side = Literal["pinned", "candidate"]
SIDES: tuple[Side, ...] = ("pinned", "candidate")

T = TypeVar("T")


@dataclass(frozen=True)
class Sides(Generic[T]):
    """One measure of both models."""

    pinned: T
    candidate: T

    def of(self, side: Side) -> T:
        return self.pinned if side == "pinned" else self.candidate


@dataclass(frozen=True)
class ChangedCase:
    """A case whose score (its share of repeats passed) differs between the models."""

    case: str
    pinned: float
    candidate: float


@dataclass(frozen=True)
class FieldChanges:
    """Of one output field: cases where the candidate fails a check the pinned model passes
    (worse), and the other way round (better)."""

    worse: int = 0
    better: int = 0


@dataclass(frozen=True)
class ModelComparison:
    """The paired comparison of the pinned model with a candidate, and what to do about it.
    Cost and latency are None on a side whose answers all came from the cache."""

    workflow: str
    pinned: str
    candidate: str
    verdict: Verdict
    reasons: list[str]
    pass_rate: Sides[float]
    changed_cases: list[ChangedCase]
    fields: dict[str, FieldChanges]
    measured_calls: Sides[int]
    cost_usd: Sides[float | None]
    median_latency_ms: Sides[float | None]
    recommendation: str


@dataclass(frozen=True)
class NotCompared:
    """A model left cases unanswered: nothing can be said of either (the candidate is not run
    when the pinned model is the one that did not answer)."""

    side: Side
    model: str
    unanswered: Unanswered


async def compare_models(
    pinned: Workflow[Any],
    candidate: str,
    *,
    repeat: int = 1,
    concurrency: int = 4,
    use_cache: bool = True,
) -> ModelComparison | NotCompared:
    """Run the eval set on the pinned model, then on `candidate` (provider:id), and compare."""
    other = pinned.replace(model=candidate)
    cases = workflow_cases(pinned)
    pinned.provider.check()
    other.provider.check()
    reuse = (
        cached_answers(pinned, cases, repeat) & cached_answers(other, cases, repeat)
        if use_cache
        else set()
    )
    runs: list[EvalRun] = []
    for side, wf in zip(SIDES, (pinned, other), strict=True):
        run = await run_eval(wf, cases, repeat=repeat, concurrency=concurrency, reuse=reuse)
        unanswered = run.unanswered()
        if unanswered is not None:
            return NotCompared(side, str(wf.model), unanswered)
        runs.append(run)
    before, after = runs
    return compare_runs(pinned, before, after)


def compare_runs(pinned: Workflow[Any], before: EvalRun, after: EvalRun) -> ModelComparison:
    """The paired comparison of two eval runs of the same cases on two models."""
    scores_before, scores_after = before.scores(), after.scores()
    critical = {case.id for case in before.cases if case.critical}
    result = gate(
        [
            CaseOutcome(case, scores_before[case], scores_after.get(case), case in critical)
            for case in scores_before
        ]
    )
    changed = [
        ChangedCase(case, scores_before[case], scores_after.get(case, 0.0))
        for case in scores_before
        if scores_before[case] != scores_after.get(case, 0.0)
    ]
    tallies: dict[str, dict[str, int]] = {}
    for mine, theirs in zip(_by_case(before), _by_case(after), strict=True):
        for name, passed in mine.items():
            tally = tallies.setdefault(name, {"worse": 0, "better": 0})
            if passed and not theirs.get(name, False):
                tally["worse"] += 1
            elif not passed and theirs.get(name, False):
                tally["better"] += 1
    measured = Sides(_fresh(before), _fresh(after))
    return ModelComparison(
        workflow=pinned.name,
        pinned=str(before.workflow.model),
        candidate=str(after.workflow.model),
        verdict=result.verdict,
        reasons=result.reasons,
        pass_rate=Sides(result.rate_baseline[0], result.rate_current[0]),
        changed_cases=changed,
        fields={name: FieldChanges(**tally) for name, tally in tallies.items()},
        measured_calls=measured,
        cost_usd=Sides(
            before.cost_usd if measured.pinned else None,
            after.cost_usd if measured.candidate else None,
        ),
        median_latency_ms=Sides(_latency(pinned, before), _latency(pinned, after)),
        recommendation=recommend(result),
    )


def recommend(result: GateResult) -> str:
    """What to do with the candidate, given the paired gate's verdict on it."""
    if result.verdict == "regression":
        return "keep the pinned model: the candidate is worse on this eval set"
    if result.verdict == "inconclusive":
        return "not proven either way: add cases or rerun with --repeat 3 before switching"
    return (
        "the candidate is no worse on this eval set: switch the pin, run "
        "`smallops eval --update-baseline`, and review its first outputs"
    )


def _by_case(run: EvalRun) -> list[dict[str, bool]]:
    table: dict[str, dict[str, bool]] = {}
    for result in run.results:
        checks = table.setdefault(result.case.id, {})
        for check in result.fields:
            checks[check.field] = checks.get(check.field, True) and check.passed
    return [table.get(case.id, {}) for case in run.cases]


def _fresh(run: EvalRun) -> int:
    """Calls made in this run: only these measured cost and latency."""
    return sum(1 for r in run.results if not r.cached)


def _latency(pinned: Workflow[Any], run: EvalRun) -> float | None:
    """The median latency of the calls made in this run (None: none was made)."""
    ids = [r.run_id for r in run.results if r.run_id and not r.cached]
    if not ids:
        return None
    values = latencies(pinned.plan().writer.store.engine, ids)
    return round(statistics.median(values), 1) if values else None
