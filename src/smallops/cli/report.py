"""`smallops report`: per workflow, what the calls did and what they cost."""

from __future__ import annotations

import itertools
from typing import Any

import typer
from rich.markup import escape

from smallops.cli import _common


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)


def report_command(
    ctx: typer.Context,
    since: str = typer.Option("7d", "--since", help="e.g. 24h, 7d, 4w, or a date."),
    as_json: bool = typer.Option(False, "--json", help="A JSON array, one object per workflow."),
) -> None:
    """Production calls per workflow: statuses, tokens, cost, p50/p95 latency, models served.

    Also when the served model changed, and week-over-week shifts in each enum field of the
    output (chi-square test, p-value), both on the pinned model's route: calls that went to a
    secondary model are reported as fallback, not as a model change. Eval runs are left out:
    `smallops eval` reports them.
    """
    from smallops.evals.shifts import distribution_shifts, model_changes
    from smallops.storage.queries import report

    engine = _common.project(ctx).engine()
    rows = report(engine, since=_common.since(since))
    for row in rows:
        row["model_changes"] = model_changes(engine, row["workflow"])
        row["distribution_shifts"] = distribution_shifts(engine, row["workflow"])
    if as_json:
        _common.print_json(rows)
        return
    print_report(rows, since)


def print_report(rows: list[dict[str, Any]], since: str) -> None:
    """One short block per workflow: readable at any terminal width."""
    say = _common.out.print
    if not rows:
        say(f"no calls recorded in the last {since}", markup=False)
        return
    say(f"[bold]Report, last {since}[/bold]")
    for row in rows:
        cost = _common.money(row["cost_usd"])
        if row["unpriced_calls"]:
            cost += f" ({row['unpriced_calls']} calls unpriced)"
        served = ", ".join(f"{m} x{n}" for m, n in row["models_served"].items()) or "-"
        if row["model_mismatches"]:
            served += f"  [red]{row['model_mismatches']} not the pinned model[/red]"
        say(f"\n[bold]{escape(row['workflow'])}[/bold]  {row['calls']} calls")
        for label, value in (
            ("statuses", _counts(row["statuses"])),
            ("errors", _counts(row["errors"]) or "none"),
            (
                "tokens",
                f"{row['input_tokens']:,} in ({row['cached_tokens']:,} cached), "
                f"{row['output_tokens']:,} out",
            ),
            ("cost", cost),
            (
                "latency",
                f"p50 {_ms(row['latency_p50_ms'])} ms, p95 {_ms(row['latency_p95_ms'])} ms",
            ),
        ):
            say(f"  {label:<9} {escape(value)}")
        say(f"  {'models':<9} {served}")
        fallback = row["fallback"]
        if fallback["calls"]:
            models = ", ".join(f"{m} x{n}" for m, n in fallback["models_served"].items())
            say(
                f"  {'fallback':<9} {fallback['calls']} calls went to the secondary model"
                + (f" ({escape(models)})" if models else "")
            )
        _print_drift(row)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _print_drift(row: dict[str, Any]) -> None:
    say = _common.out.print
    models = row.get("model_changes") or []
    for before, after in itertools.pairwise(models):
        say(
            f"  [yellow]model changed[/yellow] {_common.when(after['first_seen'])}: "
            f"{escape(before['model'])} -> {escape(after['model'])}"
        )
    for shift in row.get("distribution_shifts") or []:
        mark = "[red]shifted[/red]" if shift["shifted"] else "steady"
        say(
            f"  {'drift':<9} {escape(shift['field'])}: {mark}, week over week "
            f"chi-square {shift['chi_square']:g} ({shift['df']} df), p = {shift['p_value']:.3g}"
        )
