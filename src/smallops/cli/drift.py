"""`smallops drift`: test a model upgrade like a dependency upgrade, on the eval set.

The comparison and its recommendation are `smallops.evals.compare`; this module renders them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from smallops.cli import _common

if TYPE_CHECKING:
    from smallops.evals.compare import ModelComparison, Sides


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
    from smallops.evals.compare import NotCompared, compare_models

    pinned = _common.project(ctx).workflow(workflow)
    comparison = _common.run_async(
        compare_models(
            pinned, candidate, repeat=repeat, concurrency=concurrency, use_cache=not no_cache
        )
    )
    if isinstance(comparison, NotCompared):
        _common.err.print(
            f"error: {pinned.name}: {comparison.side} model {comparison.model}: "
            f"{comparison.unanswered}: drift cannot compare the models; run it again once both "
            "answer",
            markup=False,
        )
        raise typer.Exit(2)
    if as_json:
        _common.print_json(dataclasses.asdict(comparison))
    else:
        _print(comparison)
    if comparison.verdict == "regression":
        raise typer.Exit(1)


def _measured(
    comparison: ModelComparison, values: Sides[Any], show: Callable[[Any], str]
) -> list[str]:
    """Both sides' cost or latency, or "not measured" on a side whose answers all came from
    the cache."""
    from smallops.evals.compare import SIDES

    return [
        show(values.of(side)) if comparison.measured_calls.of(side) else "not measured"
        for side in SIDES
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _print(comparison: ModelComparison) -> None:
    say = _common.out.print
    say(
        f"{comparison.workflow}: {comparison.pinned} (pinned) vs "
        f"{comparison.candidate} (candidate)",
        markup=False,
    )
    style = {"pass": "green", "inconclusive": "yellow", "regression": "red"}[comparison.verdict]
    say(f"[bold {style}]{comparison.verdict}[/bold {style}]")
    for reason in comparison.reasons:
        say(f"  {reason}", markup=False)
    table = Table(box=None, pad_edge=False)
    for column in ("", "pinned", "candidate"):
        table.add_column(column)
    rates = comparison.pass_rate
    table.add_row("pass rate", f"{rates.pinned:.1%}", f"{rates.candidate:.1%}")
    calls = comparison.measured_calls
    table.add_row("calls made now", str(calls.pinned), str(calls.candidate))
    table.add_row("cost", *_measured(comparison, comparison.cost_usd, _common.money))
    table.add_row("median latency ms", *_measured(comparison, comparison.median_latency_ms, _ms))
    say(table)
    if not calls.pinned:
        say(
            "  every answer came from the cache: --no-cache measures cost and latency", markup=False
        )
    for name, tally in comparison.fields.items():
        if tally.worse or tally.better:
            say(
                f"  field {name}: {tally.worse} cases worse, {tally.better} better",
                markup=False,
            )
    for case in comparison.changed_cases:
        say(f"  case {case.case}: {case.pinned:.2f} -> {case.candidate:.2f}", markup=False)
    say(f"recommendation: {comparison.recommendation}", markup=False)
