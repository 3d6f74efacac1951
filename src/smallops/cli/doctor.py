"""`smallops doctor`: the playbook as a scorecard of this project (smallops.doctor)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import typer
from rich.markup import escape

from smallops.cli import _common

if TYPE_CHECKING:
    from smallops.doctor import Scorecard, Status, Tier

SIZES = {1: "under 10", 2: "10-25", 3: "25-50"}  # people, in the compact scorecard
MARKS: dict[Status, str] = {
    "pass": "[green]✓[/green]",
    "warn": "[yellow]![/yellow]",
    "fail": "[red]✗[/red]",
}


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)


def doctor_command(
    ctx: typer.Context,
    tier: int = typer.Option(
        3,
        "--tier",
        min=1,
        max=3,
        help="The team's tier: 1 under 10 people, 2 for 10 to 25, 3 for 25 to 50.",
    ),
    as_json: bool = typer.Option(False, "--json", help="The scorecard as one JSON object."),
) -> None:
    """Score the project against the playbook: each practice, pass, warn or fail, with its fix.

    Every tier is shown; the exit code judges the practices of --tier and the tiers below it
    (default 3, the whole playbook): 1 when one of them fails, 0 otherwise. Warnings never fail.
    Practices are checked against smallops.toml, the workflows, eval sets and CI files, and the
    log (read only); a log that cannot be read fails "Every call logged". --json prints one
    object: project, target_tier, met, tiers (tier, team_size, judged, met, pass, warn, fail)
    and practices (id, tier, title, status, judged, evidence, fix).
    """
    from smallops.doctor import examine

    target = cast("Tier", tier)
    card = examine(_common.project(ctx))
    if as_json:
        _common.print_json(card.as_dict(target))
    else:
        print_scorecard(card, target)
    if not card.met(target):
        raise typer.Exit(1)


def print_scorecard(card: Scorecard, target: Tier) -> None:
    """Each tier's practices with their evidence and, unless they pass, their fix; then the
    verdict on the target tier. Long lines wrap under their text, at the terminal's width."""
    from smallops.doctor import TEAM_SIZES, TIERS

    say = _common.out.print
    _common.wrapped("", f"smallops doctor · {escape(str(card.root))}")
    for tier in TIERS:
        counts = card.counts(tier)
        shown = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
        beyond = f" · beyond --tier {target}" if tier > target else ""
        say(f"\n[bold]Tier {tier}[/bold] · {TEAM_SIZES[tier]} · {shown}{beyond}")
        for finding in card.of_tier(tier):
            line = f"[bold]{escape(finding.title)}[/bold]: {escape(finding.evidence)}"
            _common.wrapped(f"  {MARKS[finding.status]} ", line)
            if finding.fix:
                _common.wrapped("    ", f"[dim]fix:[/dim] {escape(finding.fix)}")
    say()
    met = card.met(target)
    _common.wrapped(f"{MARKS['pass' if met else 'fail']} ", verdict(card, target))


def verdict(card: Scorecard, target: Tier) -> str:
    """One line: is the target tier met, and if not, which practices fail."""
    failing = card.failing(target)
    if not failing:
        warned = sum(1 for f in card.findings if f.tier <= target and f.status == "warn")
        then = f", {warned} warnings to look at next" if warned else ""
        return f"Tier {target} met{then}."
    names = ", ".join(f.title for f in failing)
    return (
        f"Tier {target} not met: "
        f"{len(failing)} {'practice fails' if len(failing) == 1 else 'practices fail'} "
        f"({escape(names)})."
    )


def print_compact(card: Scorecard, where: str) -> None:
    """The scorecard in a few lines (for `smallops demo`): one line per tier, a mark per
    practice, and the highest tier met."""
    from smallops.doctor import PRACTICES, TIERS

    say = _common.out.print
    for tier in TIERS:
        marks = "  ".join(
            f"{MARKS[f.status]} {escape(PRACTICES[f.practice].label)}" for f in card.of_tier(tier)
        )
        say(f"  {f'Tier {tier} ({SIZES[tier]})':<17}  {marks}")
    met = [tier for tier in TIERS if card.met(tier)]
    reached = f"Tier {met[-1]} met" if met else "Tier 1 not met yet"
    say(f"  {reached}; `{escape(where)}` says what to fix, and how.")
