"""The eval gate for one workflow: run its eval set, compare with the baseline, record it.

Two steps, so that what a run may cost is said before anything is spent: `prepare_eval` loads
the cases and the baseline and estimates the cost; `run_gate` runs the cases through the real
path, draws the verdict (none when the model left a case unanswered: that run is recorded
UNJUDGED), records it on the eval run, and writes the baseline when asked. Faces render the
`GateOutcome` and choose their exit code from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallops.errors import ConfigError
from smallops.evals.baseline import Baseline, baseline_path, compare, read_baseline, write_baseline
from smallops.evals.dataset import Case, workflow_cases
from smallops.evals.runner import EvalRun, Unanswered, estimate_cost, run_eval
from smallops.evals.verdict import GateResult
from smallops.kinds import UNJUDGED
from smallops.storage.eval_log import record_verdict

if TYPE_CHECKING:  # the workflow is handed in; this layer never imports it
    from smallops.workflow import Workflow


@dataclass(frozen=True)
class PreparedEval:
    """An eval about to run: its cases, the baseline, and at most what it will cost."""

    workflow: Workflow[Any]
    cases: list[Case]
    repeat: int
    ci: bool  # compare with the baseline (which then exists)
    baseline: Baseline | None
    calls: int  # at most: cached answers are not calls
    estimate_usd: float | None  # None: the model is unpriced
    tokens: int

    @property
    def baseline_path(self) -> Path:
        return baseline_path(self.workflow.evals_path)


@dataclass(frozen=True)
class GateOutcome:
    """What one eval found. `gate` is None without --ci, or when nothing could be judged."""

    run: EvalRun
    gate: GateResult | None
    unanswered: Unanswered | None  # the cases the model never answered: no verdict
    baseline_written: Path | None

    @property
    def verdict(self) -> str | None:
        """The verdict recorded on the eval run: UNJUDGED, the gate's, or None (not gated)."""
        if self.unanswered is not None:
            return UNJUDGED
        return self.gate.verdict if self.gate is not None else None


def prepare_eval(workflow: Workflow[Any], *, repeat: int = 1, ci: bool = False) -> PreparedEval:
    """Load and check the eval set, check the provider, read the baseline (which `ci` needs),
    and estimate the cost of calling the model for every case."""
    cases = workflow_cases(workflow)
    workflow.provider.check()
    path = baseline_path(workflow.evals_path)
    baseline = read_baseline(path)
    if ci and baseline is None:
        raise ConfigError(
            f"{workflow.name} has no baseline at {path}",
            hint=f"run `smallops eval {workflow.name} --update-baseline` and commit the file",
        )
    calls = len(cases) * repeat
    estimate, tokens = estimate_cost(workflow, cases, calls)
    return PreparedEval(workflow, cases, repeat, ci, baseline, calls, estimate, tokens)


async def run_gate(
    prepared: PreparedEval,
    *,
    concurrency: int = 4,
    use_cache: bool = True,
    update_baseline: bool = False,
    on_done: Callable[[], None] | None = None,
) -> GateOutcome:
    """Run the eval, compare it with the baseline when `prepared.ci`, record the verdict, and
    write this run as the baseline when `update_baseline` (never from a run with no verdict)."""
    wf = prepared.workflow
    run = await run_eval(
        wf,
        prepared.cases,
        repeat=prepared.repeat,
        concurrency=concurrency,
        use_cache=use_cache,
        on_done=on_done,
    )
    engine = wf.plan().writer.store.engine
    unanswered = run.unanswered()
    if unanswered is not None:
        record_verdict(engine, run.id, UNJUDGED)
        return GateOutcome(run, None, unanswered, None)
    baseline = prepared.baseline
    gate = compare(baseline, run) if (prepared.ci and baseline is not None) else None
    if gate is not None:
        record_verdict(engine, run.id, gate.verdict)
    written = None
    if update_baseline:
        written = prepared.baseline_path
        write_baseline(written, run)
    return GateOutcome(run, gate, None, written)
