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
from sqlalchemy import Engine, func, select

from smallops.error_types import NO_VERDICT
from smallops.errors import SmallopsError, WorkflowFailed
from smallops.evals.dataset import Case
from smallops.evals.scorers import FieldResult, check_case
from smallops.evals.verdict import passes
from smallops.ids import uuid7
from smallops.pricing import price_run
from smallops.records import Usage
from smallops.storage.db import ensure_schema
from smallops.storage.schema import eval_cache, eval_results, eval_runs, runs

if TYPE_CHECKING:  # the workflow is handed in; this layer never imports it
    from smallops.workflow import Workflow

#: The verdict stored for a run with unanswered cases: it cannot judge the prompt.
UNJUDGED = "unjudged"


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
    cached = _load_cache(engine, evaluated) if use_cache else {}
    run = EvalRun(id=uuid7(), workflow=evaluated, cases=cases, repeat=repeat)
    limit = asyncio.Semaphore(concurrency)
    fresh: list[dict[str, Any]] = []

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
                fresh.append(
                    {"key": key, "output": output, "run_id": result.run_id, "repeat": index}
                )
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
    cached = _load_cache(_engine(evaluated), evaluated)
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


def _load_cache(engine: Engine, workflow: Workflow[Any]) -> dict[str, tuple[Any, str]]:
    query = select(eval_cache.c.key, eval_cache.c.output, eval_cache.c.run_id).where(
        eval_cache.c.workflow == workflow.name,
        eval_cache.c.prompt_version == workflow.version.id,
        eval_cache.c.model == workflow.model.model,
    )
    with engine.connect() as connection:
        return {key: (output, run_id) for key, output, run_id in connection.execute(query)}


def _store(
    engine: Engine, workflow: Workflow[Any], run: EvalRun, fresh: list[dict[str, Any]]
) -> None:
    """The eval run, its results, and the new validated outputs for the cache: one transaction."""
    run_ids = [r.run_id for r in run.results if r.run_id and not r.cached]
    with engine.begin() as connection:
        if run_ids:
            costs = connection.execute(
                select(func.sum(runs.c.cost_usd), func.count(), func.count(runs.c.cost_usd)).where(
                    runs.c.id.in_(run_ids)
                )
            ).one()
            run.cost_usd = float(costs[0] or 0.0) if costs[2] else None
            run.unpriced = int(costs[1] - costs[2])
        else:
            run.cost_usd = 0.0
        now = datetime.now(timezone.utc)
        existing = (
            {
                row.key
                for row in connection.execute(
                    select(eval_cache.c.key).where(eval_cache.c.key.in_([f["key"] for f in fresh]))
                )
            }
            if fresh
            else set()
        )
        new = [f for f in fresh if f["key"] not in existing]
        if new:
            connection.execute(
                eval_cache.insert(),
                [
                    {
                        **entry,
                        "workflow": workflow.name,
                        "prompt_version": workflow.version.id,
                        "model": workflow.model.model,
                        "created_at": now,
                    }
                    for entry in new
                ],
            )
        connection.execute(
            eval_runs.insert().values(
                id=run.id,
                workflow=workflow.name,
                prompt_version=workflow.version.id,
                model=str(workflow.model),
                dataset=str(workflow.evals_path),
                cases=len(run.cases),
                repeat=run.repeat,
                passed=run.passed,
                cost_usd=run.cost_usd,
                verdict=None,
                git_commit=workflow.plan().facts.git_commit,
                started_at=run.started_at,
                finished_at=run.finished_at or now,
                summary={"scores": run.scores()},
            )
        )
        connection.execute(
            eval_results.insert(),
            [
                {
                    "eval_run_id": run.id,
                    "case_id": r.case.id,
                    "repeat": r.repeat,
                    "run_id": r.run_id,
                    "passed": r.passed,
                    "cached": r.cached,
                    "output": r.output,
                    "error": r.error,
                    "checks": [f.__dict__ for f in r.fields],
                }
                for r in run.results
            ],
        )


def record_verdict(engine: Engine, eval_run_id: str, verdict: str) -> None:
    from sqlalchemy import update

    with engine.begin() as connection:
        connection.execute(
            update(eval_runs).where(eval_runs.c.id == eval_run_id).values(verdict=verdict)
        )
