"""`smallops drift`: test a model upgrade like a dependency upgrade, on the eval set.

Both models are measured the same way in one run: an answer comes from the eval cache only
where both models have one cached, so the calls made are the same cases on both sides, and cost
and latency are compared over those calls only (answers from the cache were not measured now).
"""

from __future__ import annotations

import statistics
from typing import Any

import typer
from rich.table import Table
from sqlalchemy import select

from smallops.cli import _common
from smallops.evals.dataset import load_cases
from smallops.evals.runner import EvalRun, cached_answers, run_eval
from smallops.evals.verdict import CaseOutcome, GateResult, gate
from smallops.storage.schema import runs
from smallops.workflow import Workflow

SIDES = ("pinned", "candidate")


def register(app: typer.Typer) -> None:
    app.command("drift")(drift_command)


def drift_command(
    ctx: typer.Context,
    workflow: str = typer.Argument(..., help="The workflow to test."),
    candidate: str = typer.Option(..., "--candidate", help="The model to compare, provider:id."),
    repeat: int = typer.Option(1, "--repeat", "-r", min=1, max=20),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, max=64),
    no_cache: bool = typer.Option(False, "--no-cache", help="Call both models for every case."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Run the eval set on the pinned model and a candidate; compare case by case.

    Reports paired differences per case and per field, cost and latency, and a recommendation.
    A cached answer is used only where both models have one, and cost and latency only over the
    calls made in this run (--no-cache measures every case). Exit 1 when the candidate is a
    regression, 2 when either model left a case unanswered (no verdict).
    """
    pinned = _common.project(ctx).workflow(workflow)
    other = pinned.replace(model=candidate)
    fields = set(pinned.output.model_fields) if pinned.output is not None else {"text"}
    cases = load_cases(pinned.evals_path, variables=pinned.prompt.variables, fields=fields)
    pinned.provider.check()
    other.provider.check()
    reuse = (
        set()
        if no_cache
        else cached_answers(pinned, cases, repeat) & cached_answers(other, cases, repeat)
    )
    runs_by_side: list[EvalRun] = []
    for side, wf in zip(SIDES, (pinned, other), strict=True):
        run = _common.run_async(
            run_eval(wf, cases, repeat=repeat, concurrency=concurrency, reuse=reuse)
        )
        unanswered = run.unanswered()
        if unanswered is not None:
            _common.err.print(
                f"error: {pinned.name}: {side} model {wf.model}: {unanswered}: drift cannot "
                "compare the models; run it again once both answer",
                markup=False,
            )
            raise typer.Exit(2)
        runs_by_side.append(run)
    before, after = runs_by_side
    comparison = compare_models(pinned, before, after)
    if as_json:
        _common.print_json(comparison)
    else:
        _print(comparison)
    if comparison["verdict"] == "regression":
        raise typer.Exit(1)


def compare_models(pinned: Workflow[Any], before: EvalRun, after: EvalRun) -> dict[str, Any]:
    """The paired comparison of two eval runs of the same cases on two models."""
    scores_before, scores_after = before.scores(), after.scores()
    critical = {case.id for case in before.cases if case.critical}
    result: GateResult = gate(
        [
            CaseOutcome(case, scores_before[case], scores_after.get(case), case in critical)
            for case in scores_before
        ]
    )
    cases = [
        {"case": case, "pinned": scores_before[case], "candidate": scores_after.get(case, 0.0)}
        for case in scores_before
        if scores_before[case] != scores_after.get(case, 0.0)
    ]
    fields: dict[str, dict[str, int]] = {}
    for mine, theirs in zip(_by_case(before), _by_case(after), strict=True):
        for name, passed in mine.items():
            tally = fields.setdefault(name, {"worse": 0, "better": 0})
            if passed and not theirs.get(name, False):
                tally["worse"] += 1
            elif not passed and theirs.get(name, False):
                tally["better"] += 1
    return {
        "workflow": pinned.name,
        "pinned": str(before.workflow.model),
        "candidate": str(after.workflow.model),
        "verdict": result.verdict,
        "reasons": result.reasons,
        "pass_rate": {"pinned": result.rate_baseline[0], "candidate": result.rate_current[0]},
        "changed_cases": cases,
        "fields": fields,
        "measured_calls": {"pinned": _fresh(before), "candidate": _fresh(after)},
        "cost_usd": {
            "pinned": before.cost_usd if _fresh(before) else None,
            "candidate": after.cost_usd if _fresh(after) else None,
        },
        "median_latency_ms": {
            "pinned": _latency(pinned, before),
            "candidate": _latency(pinned, after),
        },
        "recommendation": _recommend(result),
    }


def _recommend(result: GateResult) -> str:
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
    with pinned.plan().writer.store.engine.connect() as connection:
        values = list(
            connection.execute(select(runs.c.latency_ms).where(runs.c.id.in_(ids))).scalars()
        )
    return round(statistics.median(values), 1) if values else None


def _measured(comparison: dict[str, Any], side: str, key: str, show: Any) -> str:
    """A side's cost or latency, or "not measured" when all its answers came from the cache."""
    return show(comparison[key][side]) if comparison["measured_calls"][side] else "not measured"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _print(comparison: dict[str, Any]) -> None:
    say = _common.out.print
    say(
        f"{comparison['workflow']}: {comparison['pinned']} (pinned) vs "
        f"{comparison['candidate']} (candidate)",
        markup=False,
    )
    style = {"pass": "green", "inconclusive": "yellow", "regression": "red"}[comparison["verdict"]]
    say(f"[bold {style}]{comparison['verdict']}[/bold {style}]")
    for reason in comparison["reasons"]:
        say(f"  {reason}", markup=False)
    table = Table(box=None, pad_edge=False)
    for column in ("", "pinned", "candidate"):
        table.add_column(column)
    rates = comparison["pass_rate"]
    table.add_row("pass rate", f"{rates['pinned']:.1%}", f"{rates['candidate']:.1%}")
    calls = comparison["measured_calls"]
    table.add_row("calls made now", str(calls["pinned"]), str(calls["candidate"]))
    for label, key, show in (
        ("cost", "cost_usd", _common.money),
        ("median latency ms", "median_latency_ms", _ms),
    ):
        table.add_row(label, *(_measured(comparison, side, key, show) for side in SIDES))
    say(table)
    if not calls["pinned"]:
        say(
            "  every answer came from the cache: --no-cache measures cost and latency", markup=False
        )
    for name, tally in comparison["fields"].items():
        if tally["worse"] or tally["better"]:
            say(
                f"  field {name}: {tally['worse']} cases worse, {tally['better']} better",
                markup=False,
            )
    for case in comparison["changed_cases"]:
        say(f"  case {case['case']}: {case['pinned']:.2f} -> {case['candidate']:.2f}", markup=False)
    say(f"recommendation: {comparison['recommendation']}", markup=False)
