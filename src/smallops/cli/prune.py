"""`smallops prune`: retention. Old runs keep their metadata and lose their content."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import typer

from smallops.cli import _common
from smallops.errors import InputError

if TYPE_CHECKING:
    from rich.progress import Progress

    from smallops.project import Project
    from smallops.storage.db import Engine


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_command)


def prune_command(
    ctx: typer.Context,
    workflow: str | None = typer.Argument(None, help="Only this workflow (default: all)."),
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        help="Prune runs started before this: 90d, 12w, or a date (default: each "
        "workflow's retention_days).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Count what would be pruned; change nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per workflow."),
) -> None:
    """Remove the content of old runs: inputs, messages, outputs, raw requests and responses.

    What reports, budgets, drift and review statistics need stays (status, model, tokens, cost,
    latency, the output's labels such as its category, review actions). Runs still waiting for
    a reviewer are kept whole. Without --older-than, each workflow's `retention_days` applies
    and workflows without one are left alone. Safe to interrupt: running it again finishes the
    work.
    """
    from smallops.storage import prune as retention

    project = _common.project(ctx)
    engine = project.engine()
    cutoffs = _cutoffs(project, engine, workflow, _common.since(older_than, "--older-than"))
    counts = []
    for name, before in cutoffs.items():
        counted = retention.count(engine, name, before)
        counts.append(counted)
        if dry_run:
            continue
        with _progress(name, counted.runs, show=not as_json and _common.err.is_terminal) as bar:
            task = bar.add_task("prune", total=counted.runs)
            counted.runs = retention.prune(engine, name, before, partial(bar.advance, task))
    for result in counts:
        row = {
            "workflow": result.workflow,
            "before": result.before,
            "runs": result.runs,
            "kept_for_review": result.kept_for_review,
            "dry_run": dry_run,
        }
        if as_json:
            _common.print_json(row)
        else:
            _print(row)


def _cutoffs(
    project: Project, engine: Engine, workflow: str | None, older_than: datetime | None
) -> dict[str, Any]:
    """Each workflow to prune, with the time before which its runs lose their content."""
    from smallops.storage import prune as retention
    from smallops.storage.queries import workflows_logged

    if older_than is not None:
        names = [workflow] if workflow is not None else workflows_logged(engine)
        return dict.fromkeys(names, older_than)
    workflows = [project.workflow(workflow)] if workflow else list(project.workflows.values())
    cutoffs = retention.retention_cutoffs({wf.name: wf.retention_days for wf in workflows})
    if not cutoffs:
        which = f"workflow {workflow!r} sets no" if workflow else "no workflow sets"
        raise InputError(
            f"nothing to prune: {which} retention_days",
            hint="give --older-than (e.g. 90d), or set retention_days=... on the workflow",
        )
    return cutoffs


def _progress(name: str, total: int, show: bool) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn(name),
        BarColumn(),
        MofNCompleteColumn(),
        console=_common.err,
        transient=True,
        disable=not show or total == 0,
    )


def _print(row: dict[str, Any]) -> None:
    verb = "would prune" if row["dry_run"] else "pruned"
    kept = row["kept_for_review"]
    line = (
        f"{row['workflow']}: {verb} {row['runs']:,} run{'s' if row['runs'] != 1 else ''} "
        f"started before {row['before']:%Y-%m-%d %H:%M} UTC"
    )
    if kept:
        line += f"; kept {kept:,} still waiting for a reviewer"
    _common.out.print(line, markup=False)
