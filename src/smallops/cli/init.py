"""`smallops init`, `smallops list` and `smallops demo`: starting a project and looking at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from smallops.cli import _common
from smallops.scaffold import TEMPLATE_NAMES, create_project


def register(app: typer.Typer) -> None:
    app.command("init")(init_command)
    app.command("list")(list_command)
    from smallops.cli.demo import demo_command

    app.command("demo")(demo_command)


def init_command(
    folder: Path = typer.Argument(Path(), help="Where to create the project."),
    template: str = typer.Option(
        "email-triage", "--template", "-t", help=f"One of: {', '.join(TEMPLATE_NAMES)}."
    ),
) -> None:
    """Create a project: smallops.toml, a working workflow, its prompt and an eval set."""
    written, kept = create_project(folder, template)
    for path in written:
        _common.out.print(f"  created {folder / path}", markup=False)
    for path in kept:
        _common.out.print(f"  kept    {folder / path} (already there)", markup=False)
    key = "ANTHROPIC_API_KEY" if template == "document-extraction" else "OPENAI_API_KEY"
    evals = f"evals/{template.replace('-', '_')}.jsonl"
    _common.out.print(
        f"\nNext: cd {folder}; export {key}=...; smallops run {template} --input {evals}",
        markup=False,
    )


def list_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per workflow."),
) -> None:
    """Load every workflow in the project (checking pins, fallbacks, prompts) and list them."""
    workflows = _common.project(ctx).workflows
    rows: list[dict[str, Any]] = [
        {
            "name": wf.name,
            "model": str(wf.model),
            "prompt_version": wf.version.id,
            "prompt": str(wf.prompt_path),
            "output": wf.output.__name__ if wf.output else None,
            "review": str(wf.review),
            "fallback": wf.fallback.kind,
            "content": wf.content,
            "retention_days": wf.retention_days,
            "owner": wf.owner,
            "description": wf.description,
        }
        for wf in workflows.values()
    ]
    if as_json:
        for row in rows:
            _common.print_json(row)
        return
    table = Table()
    for column in ("name", "model", "prompt version", "output", "review", "fallback", "owner"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            row["model"],
            row["prompt_version"],
            row["output"] or "text",
            row["review"],
            row["fallback"],
            row["owner"] or "-",
        )
    _common.out.print(table if rows else "no workflows in workflows/*.py yet")
