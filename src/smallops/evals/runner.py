"""Running an eval set through the real workflow path: every call is a logged run.

The workflow runs with review off and fallback "raise" (an eval wants the model's own answer,
not a human's), marked `origin="eval"` so reports can tell eval traffic from production. A cache
keyed by model, prompt version, input and repeat index keeps validated outputs only, so a rerun
with nothing changed costs nothing, and repeats are distinct entries.

A case the model never answered (a guard refused it, the provider failed it) says nothing about
the prompt: `EvalRun.unanswered` counts those, and no verdict is drawn from a run that has any.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from smallops.error_types import NO_VERDICT
from smallops.errors import SmallopsError, WorkflowFailed
from smallops.evals.dataset import Case
from smallops.evals.scorers import FieldResult, check_case
from smallops.evals.verdict import passes
from smallops.ids import uuid7
from smallops.pricing import price_run
from smallops.records import Usage
from smallops.storage.db import ensure_schema
from smallops.storage.eval_log import (
    CacheEntry,
    CacheScope,
    EvalResultRow,
    EvalRunRow,
    cached_outputs,
    save_eval_run,
)

if TYPE_CHECKING:  # the workflow is handed in; this layer never imports it
    from smallops.storage.db import Engine
    from smallops.workflow import Workflow


@dataclass
class CaseResult:
    """One case at one repeat."""

    case: Case
    repeat: int
    output: Any
    fields: list[FieldResult]
    run_id: str | None
    cached: bool
    error: str | None = None
    error_type: str | None = None

    @property
    def passed(self) -> bool:
        """Every check passed (a case with nothing to check passes on a valid output)."""
        if not self.fields:
            return self.output is not None
        return all(f.passed for f in self.fields)

    @property
    def no_answer(self) -> str | None:
        """The error type when the model, or a grader's model, gave no answer at all."""
        if self.error_type in NO_VERDICT:
            return self.error_type
        return next((f.no_answer for f in self.fields if f.no_answer), None)


@dataclass(frozen=True)
class Unanswered:
    """The cases of a run that the model never answered, and why (error type -> calls)."""

    cases: int
    of: int
    calls: int
    of_calls: int
    kinds: dict[str, int]

    def __str__(self) -> str:
        calls = f" in {self.calls} of {self.of_calls} calls" if self.of_calls != self.of else ""
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.kinds.items())
        return f"{self.cases} of {self.of} cases got no answer from the model{calls} ({kinds})"


@dataclass
class EvalRun:
    """The results of one eval of one workflow."""

    id: str
    workflow: Workflow[Any]
    cases: list[Case]
    repeat: int
    results: list[CaseResult] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    finished_at: datetime | None = None
    cost_usd: float | None = None
    unpriced: int = 0

    def scores(self) -> dict[str, float]:
        """Each case's share of passing repeats."""
        totals: dict[str, list[bool]] = {}
        for result in self.results:
            totals.setdefault(result.case.id, []).append(result.passed)
        return {case: sum(flags) / len(flags) for case, flags in totals.items()}

    @property
    def passed(self) -> int:
        """Cases that pass: half their repeats, or every repeat for a critical case."""
        scores = self.scores()
        return sum(1 for c in self.cases if c.id in scores and passes(scores[c.id], c.critical))

    def unanswered(self) -> Unanswered | None:
        """The calls that got no answer from the model, if any: then nothing can be judged."""
        missing = [r for r in self.results if r.no_answer]
        if not missing:
            return None
        kinds = Counter(str(r.no_answer) for r in missing)
        return Unanswered(
            cases=len({r.case.id for r in missing}),
            of=len(self.cases),
            calls=len(missing),
            of_calls=len(self.results),
            kinds=dict(sorted(kinds.items(), key=lambda item: (-item[1], item[0]))),
        )


def cache_key(model: str, prompt_version: str, inputs: dict[str, Any], repeat: int) -> str:
    payload = json.dumps([model, prompt_version, inputs, repeat], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def for_evals(workflow: Workflow[Any]) -> Workflow[Any]:
    """The workflow as evals call it: the model's own answer, logged as eval traffic."""
    return workflow.replace(review="none", fallback="raise", origin="eval")


def estimate_cost(
    workflow: Workflow[Any], cases: list[Case], calls: int
) -> tuple[float | None, int]:
    """(estimated USD or None when unpriced, estimated tokens) for `calls` uncached calls."""
    if not cases or calls == 0:
        return 0.0, 0
    prompt_tokens = sum(
        sum(len(m["content"]) for m in workflow.prompt.render(case.input)) // 4 + 1
        for case in cases
    ) / len(cases)
    output_tokens = workflow.params.max_tokens or 300
    usage = Usage(input_tokens=int(prompt_tokens * calls), output_tokens=output_tokens * calls)
    plan = workflow.plan()
    cost, _ = price_run(plan.facts.pricing, workflow.model.model, usage)
    return cost, usage.input_tokens + usage.output_tokens


async def run_eval(
    workflow: Workflow[Any],
    cases: list[Case],
    *,
    repeat: int = 1,
    concurrency: int = 4,
    use_cache: bool = True,
    reuse: Collection[tuple[str, int]] | None = None,
    on_done: Callable[[], None] | None = None,
) -> EvalRun:
    """Run every case `repeat` times, from the cache where possible; score every output.

    `reuse`, when given, limits the cache to these (case id, repeat index) pairs.
    """
    evaluated = for_evals(workflow)
    engine = _engine(evaluated)
    cached = cached_outputs(engine, _scope(evaluated)) if use_cache else {}
    run = EvalRun(id=uuid7(), workflow=evaluated, cases=cases, repeat=repeat)
    limit = asyncio.Semaphore(concurrency)
    fresh: list[CacheEntry] = []

    async def one(case: Case, index: int) -> CaseResult:
        key = cache_key(evaluated.model.model, evaluated.version.id, case.input, index)
        async with limit:
            try:
                if key in cached and (reuse is None or (case.id, index) in reuse):
                    output, run_id = cached[key]
                    return await _scored(case, index, output, run_id, True, evaluated)
                try:
                    result = await evaluated.arun(**case.input)
                except WorkflowFailed as exc:
                    return await _scored(
                        case,
                        index,
                        None,
                        exc.run_id,
                        False,
                        evaluated,
                        error=exc.message,
                        error_type=exc.error_type,
                    )
                except SmallopsError:
                    raise  # the set-up is wrong (a missing input): one line for the whole run
                except (
                    Exception
                ) as exc:  # a bug, here or in an SDK: recorded on the run, no verdict
                    return await _scored(
                        case,
                        index,
                        None,
                        None,
                        False,
                        evaluated,
                        error=f"{type(exc).__name__}: {exc}",
                        error_type="internal_error",
                    )
                output = evaluated.plan().writer.redact.value(_plain(result.output))
                fresh.append(CacheEntry(key, output, result.run_id, index))
                return await _scored(case, index, output, result.run_id, False, evaluated)
            finally:
                if on_done is not None:
                    on_done()

    run.results = list(
        await asyncio.gather(*(one(case, index) for case in cases for index in range(repeat)))
    )
    run.finished_at = datetime.now(timezone.utc)
    evaluated.plan().writer.flush()
    _store(engine, evaluated, run, fresh)
    return run


async def _scored(
    case: Case,
    index: int,
    output: Any,
    run_id: str | None,
    cached: bool,
    workflow: Workflow[Any],
    *,
    error: str | None = None,
    error_type: str | None = None,
) -> CaseResult:
    redact = workflow.plan().writer.redact  # an output may echo a key: it goes to CI logs
    output, error = redact.value(output), redact(error)
    fields = await check_case(case, output, error, workflow)
    return CaseResult(case, index, output, fields, run_id, cached, error, error_type)


def cached_answers(workflow: Workflow[Any], cases: list[Case], repeat: int) -> set[tuple[str, int]]:
    """The (case id, repeat index) pairs the eval cache holds an answer for."""
    evaluated = for_evals(workflow)
    cached = cached_outputs(_engine(evaluated), _scope(evaluated))
    model, version = evaluated.model.model, evaluated.version.id
    return {
        (case.id, index)
        for case in cases
        for index in range(repeat)
        if cache_key(model, version, case.input, index) in cached
    }


def _plain(output: Any) -> Any:
    return output.model_dump(mode="json") if isinstance(output, BaseModel) else output


def _engine(workflow: Workflow[Any]) -> Engine:
    engine = workflow.plan().writer.store.engine
    ensure_schema(engine)
    return engine


def _scope(workflow: Workflow[Any]) -> CacheScope:
    return CacheScope(workflow.name, workflow.version.id, workflow.model.model)


def _store(engine: Engine, workflow: Workflow[Any], run: EvalRun, fresh: list[CacheEntry]) -> None:
    """The eval run, its results, and the new validated outputs for the cache: one transaction
    (which also sums what the calls made now cost, onto `run`)."""
    cost = save_eval_run(
        engine,
        EvalRunRow(
            id=run.id,
            workflow=workflow.name,
            prompt_version=workflow.version.id,
            model=str(workflow.model),
            dataset=str(workflow.evals_path),
            cases=len(run.cases),
            repeat=run.repeat,
            passed=run.passed,
            git_commit=workflow.plan().facts.git_commit,
            started_at=run.started_at,
            finished_at=run.finished_at,
            summary={"scores": run.scores()},
        ),
        [
            EvalResultRow(
                case_id=r.case.id,
                repeat=r.repeat,
                run_id=r.run_id,
                passed=r.passed,
                cached=r.cached,
                output=r.output,
                error=r.error,
                checks=[_stored_check(f, r.case) for f in r.fields],
            )
            for r in run.results
        ],
        measured=[r.run_id for r in run.results if r.run_id and not r.cached],
        scope=_scope(workflow),
        fresh=fresh,
    )
    run.cost_usd, run.unpriced = cost.cost_usd, cost.unpriced


def _stored_check(result: FieldResult, case: Case) -> dict[str, Any]:
    """A check as the eval log keeps it: with the case's expected value (or check object), so
    eval history can count per-field accuracy and confusions without the eval file."""
    return {**result.__dict__, "expected": case.expected.get(result.field)}
