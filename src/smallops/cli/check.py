"""`smallops check`: what CI should refuse before a workflow change lands (smallops.readiness)."""

from __future__ import annotations

import dataclasses

import typer

from smallops.cli import _common


def register(app: typer.Typer) -> None:
    app.command("check")(check_command)


def check_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per problem."),
) -> None:
    """Check every workflow: evals ran on its current prompt, pinned model, fallback, 20+ cases.

    Exit 0 when all is well, 1 listing each problem with its fix. Warnings (a workflow whose
    alerts would reach nobody) are listed with "!" and do not change the exit code.
    """
    from smallops.readiness import check_readiness

    readiness = check_readiness(_common.project(ctx))
    if as_json:
        for problem in readiness.problems:
            _common.print_json(dataclasses.asdict(problem))
    elif not readiness.ready:
        for p in readiness.problems:
            where = f"{p.workflow}: " if p.workflow else ""
            mark = "✗" if p.level == "problem" else "!"
            _common.out.print(f"{mark} {where}{p.problem}\n    fix: {p.fix}", markup=False)
    else:
        for p in readiness.problems:  # warnings only
            _common.out.print(f"! {p.workflow}: {p.problem}\n    fix: {p.fix}", markup=False)
        _common.out.print(
            f"✓ {readiness.workflows} workflows checked: evals current, models "
            "pinned, fallbacks declared, eval sets of 20+ cases",
            markup=False,
        )
    if not readiness.ready:
        raise typer.Exit(1)
