"""`smallops drift`: test a model upgrade like a dependency upgrade, on the eval set."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import typer
from rich.table import Table
from sqlalchemy import select

from smallops.cli import _common
from smallops.evals.dataset import load_cases
from smallops.evals.runner import EvalRun, run_eval
from smallops.evals.stats import CaseOutcome, GateResult, gate
from smallops.storage.schema import runs
from smallops.workflow import Workflow


def register(app: typer.Typer) -> None:
    app.command("drift")(drift_command)


def drift_command(
    ctx: typer.Context,
    workflow: str = typer.Argument(..., help="The workflow to test."),
    candidate: str = typer.Option(..., "--candidate", help="The model to compare, provider:id."),
    repeat: int = typer.Option(1, "--repeat", "-r", min=1, max=20),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, max=64),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Run the eval set on the pinned model and a candidate; compare case by case.

    Reports paired differences per case and per field, cost and latency, and a recommendation.
    Exit 1 when the candidate is a regression.
    """
    pinned = _common.project(ctx).workflow(workflow)
    other = pinned.replace(model=candidate)
    fields = set(pinned.output.model_fields) if pinned.output is not None else {"text"}
    cases = load_cases(pinned.evals_path, variables=pinned.prompt.variables, fields=fields)
    pinned.provider.check()
    other.provider.check()
    before = asyncio.run(run_eval(pinned, cases, repeat=repeat, concurrency=concurrency))
    after = asyncio.run(run_eval(other, cases, repeat=repeat, concurrency=concurrency))
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
    latency_before, latency_after = _latency(pinned, before), _latency(pinned, after)
    return {
        "workflow": pinned.name,
        "pinned": str(before.workflow.model),
        "candidate": str(after.workflow.model),
        "verdict": result.verdict,
        "reasons": result.reasons,
        "pass_rate": {"pinned": result.rate_baseline[0], "candidate": result.rate_current[0]},
        "changed_cases": cases,
        "fields": fields,
        "cost_usd": {"pinned": before.cost_usd, "candidate": after.cost_usd},
        "median_latency_ms": {"pinned": latency_before, "candidate": latency_after},
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


def _latency(pinned: Workflow[Any], run: EvalRun) -> float | None:
    ids = [r.run_id for r in run.results if r.run_id and not r.cached]
    if not ids:
        return None
    with pinned.plan().writer.store.engine.connect() as connection:
        values = list(
            connection.execute(select(runs.c.latency_ms).where(runs.c.id.in_(ids))).scalars()
        )
    return round(statistics.median(values), 1) if values else None


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
    cost = comparison["cost_usd"]
    table.add_row("cost", _common.money(cost["pinned"]), _common.money(cost["candidate"]))
    latency = comparison["median_latency_ms"]
    table.add_row("median latency ms", str(latency["pinned"]), str(latency["candidate"]))
    say(table)
    for name, tally in comparison["fields"].items():
        if tally["worse"] or tally["better"]:
            say(
                f"  field {name}: {tally['worse']} cases worse, {tally['better']} better",
                markup=False,
            )
    for case in comparison["changed_cases"]:
        say(f"  case {case['case']}: {case['pinned']:.2f} -> {case['candidate']:.2f}", markup=False)
    say(f"recommendation: {comparison['recommendation']}", markup=False)
