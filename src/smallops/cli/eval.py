"""`smallops eval`: run a workflow's eval set, keep a baseline, gate pull requests on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from smallops.cli import _common
from smallops.errors import ConfigError

if TYPE_CHECKING:
    from smallops.evals.gate import GateOutcome, PreparedEval
    from smallops.evals.runner import EvalRun
    from smallops.evals.verdict import GateResult

HELP = """Run WORKFLOW's eval set (every workflow when none is named) through the real path.

Every call is logged (as eval traffic); validated outputs are cached by model, prompt version,
input and repeat, so a rerun with nothing changed costs nothing (--no-cache to call anyway).
--update-baseline writes evals/<workflow>.baseline.json to commit. --ci compares with it case
by case (exact sign test on the cases that changed, paired bootstrap, Wilson intervals): exit 0
pass or inconclusive, 1 regression (a critical case of the baseline that fails or is missing is
one), 2 configuration error or no verdict: a case the model never answered (outage, breaker,
rate limit, budget) cannot be judged, so the run is neither a pass nor a regression.
"""


def register(app: typer.Typer) -> None:
    app.command("eval", help=HELP)(eval_command)


def eval_command(
    ctx: typer.Context,
    workflow: str | None = typer.Argument(None, help="Workflow name (default: every workflow)."),
    repeat: int = typer.Option(1, "--repeat", "-r", min=1, max=20, help="Runs per case."),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, max=64),
    model: str | None = typer.Option(None, "--model", help="Run on another model (provider:id)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Call the model for every case."),
    ci: bool = typer.Option(False, "--ci", help="Compare with the baseline; exit 1 on regression."),
    update_baseline: bool = typer.Option(
        False, "--update-baseline", help="Write this run as the baseline to commit."
    ),
    junit_file: Path | None = typer.Option(None, "--junit", help="Write JUnit XML here."),
    markdown_file: Path | None = typer.Option(None, "--markdown", help="Write a Markdown summary."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary per workflow."),
) -> None:
    from smallops.evals import report
    from smallops.evals.gate import prepare_eval

    project = _common.project(ctx)
    chosen = [project.workflow(workflow)] if workflow else list(project.workflows.values())
    if not chosen:
        raise ConfigError("no workflows to evaluate", hint="define one in workflows/*.py")
    worst = 0
    markdowns, junits = [], []
    for wf in chosen:
        if model:
            wf = wf.replace(model=model)
        prepared = prepare_eval(wf, repeat=repeat, ci=ci)
        _print_estimate(prepared)
        outcome = _run_with_progress(prepared, concurrency, not no_cache, update_baseline)
        _print_outcome(outcome, ci, not no_cache, update_baseline, as_json)
        markdowns.append(report.markdown(outcome.run, outcome.gate))
        junits.append(report.junit(outcome.run, outcome.gate))
        if outcome.unanswered is not None:
            worst = 2
        elif outcome.gate is not None and outcome.gate.verdict == "regression":
            worst = max(worst, 1)
    _write_outputs(markdowns, junits, markdown_file, junit_file, ci)
    if worst:
        raise typer.Exit(worst)


def _print_estimate(prepared: PreparedEval) -> None:
    wf, estimate = prepared.workflow, prepared.estimate_usd
    _common.err.print(
        f"{wf.name}: {len(prepared.cases)} cases x {prepared.repeat} on {wf.model}, "
        f"prompt {wf.version.id}; at most {prepared.calls} calls, about {prepared.tokens:,} "
        "tokens, "
        + ("unpriced" if estimate is None else f"up to ${estimate:.4f}")
        + " (cached answers cost nothing)",
        markup=False,
    )


def _run_with_progress(
    prepared: PreparedEval, concurrency: int, use_cache: bool, update_baseline: bool
) -> GateOutcome:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from smallops.evals.gate import run_gate

    progress = Progress(
        TextColumn(prepared.workflow.name),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_common.err,
        transient=True,
    )
    with progress:
        task = progress.add_task("eval", total=prepared.calls)
        return _common.run_async(
            run_gate(
                prepared,
                concurrency=concurrency,
                use_cache=use_cache,
                update_baseline=update_baseline,
                on_done=lambda: progress.advance(task),
            )
        )


def _print_outcome(
    outcome: GateOutcome, ci: bool, use_cache: bool, update_baseline: bool, as_json: bool
) -> None:
    run, gate = outcome.run, outcome.gate
    if outcome.unanswered is not None:
        judge = "the gate" if ci else "this eval"
        _common.err.print(
            f"error: {run.workflow.name}: {outcome.unanswered}: {judge} cannot judge the prompt"
            + ("; the baseline was not written" if update_baseline else "")
            + "; run it again once the model answers"
            + (" (the answers that came are cached)" if use_cache else ""),
            markup=False,
        )
        if as_json:
            _common.print_json(_summary(run, None))
        return
    if outcome.baseline_written is not None:
        _common.err.print(
            f"baseline written to {outcome.baseline_written}: commit it", markup=False
        )
    if as_json:
        _common.print_json(_summary(run, gate))
    else:
        _print_run(run, gate)


def _print_run(run: EvalRun, gate: GateResult | None) -> None:
    say = _common.out.print
    scores = run.scores()
    failed = [r for r in run.results if not r.passed]
    cost = "unpriced" if run.cost_usd is None else f"${run.cost_usd:.4f}"
    if run.unpriced and run.cost_usd is not None:
        cost += f" ({run.unpriced} calls unpriced)"
    say(
        f"{run.workflow.name}: {run.passed} of {len(scores)} cases pass; cost {cost}; "
        f"{sum(r.cached for r in run.results)} of {len(run.results)} answers from the cache",
        markup=False,
    )
    if failed:
        table = Table(box=None, pad_edge=False)
        for column in ("case", "repeat", "failed checks"):
            table.add_column(column, overflow="fold")
        for result in failed:
            detail = "; ".join(f"{f.field}: {f.detail}" for f in result.fields if not f.passed)
            table.add_row(result.case.id, str(result.repeat), detail or (result.error or ""))
        say(table)
    if gate is not None:
        style = {"pass": "green", "inconclusive": "yellow", "regression": "red"}[gate.verdict]
        say(f"[bold {style}]{gate.verdict}[/bold {style}]")
        for reason in gate.reasons:
            say(f"  {reason}", markup=False)


def _summary(run: EvalRun, gate: GateResult | None) -> dict[str, Any]:
    return {
        "workflow": run.workflow.name,
        "eval_run_id": run.id,
        "prompt_version": run.workflow.version.id,
        "model": str(run.workflow.model),
        "cases": len(run.scores()),
        "repeat": run.repeat,
        "passed": run.passed,
        "cost_usd": run.cost_usd,
        "cached": sum(r.cached for r in run.results),
        "verdict": gate.verdict if gate else None,
        "gate": gate.__dict__ if gate else None,
        "unanswered": unanswered.__dict__ if (unanswered := run.unanswered()) else None,
        "results": [
            {
                "case": r.case.id,
                "repeat": r.repeat,
                "passed": r.passed,
                "run_id": r.run_id,
                "cached": r.cached,
                "checks": [f.__dict__ for f in r.fields],
                "error": r.error,
                "no_answer": r.no_answer,
            }
            for r in run.results
        ],
    }


def _write_outputs(
    markdowns: list[str],
    junits: list[str],
    markdown_file: Path | None,
    junit_file: Path | None,
    ci: bool,
) -> None:
    text = "\n".join(markdowns)
    if markdown_file:
        markdown_file.write_text(text, encoding="utf-8")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if ci and summary:
        with Path(summary).open("a", encoding="utf-8") as handle:
            handle.write(text)
    if junit_file:
        suites = "".join(j.split("?>", 1)[-1] for j in junits)
        junit_file.write_text(
            '<?xml version="1.0" encoding="utf-8"?>\n<testsuites>' + suites + "</testsuites>\n",
            encoding="utf-8",
        )
