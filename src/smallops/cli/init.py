"""`smallops init`, `smallops list` and `smallops demo`: starting a project and looking at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from smallops.cli import _common
from smallops.cli._table import Column, print_fitted
from smallops.cli.demo import demo_command
from smallops.config import evals_file
from smallops.scaffold import TEMPLATE_NAMES, create_project, template_provider


def register(app: typer.Typer) -> None:
    app.command("init")(init_command)
    app.command("list")(list_command)
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
    provider = template_provider(template)
    key, extra = PROVIDER_NEEDS[provider]
    evals = evals_file(Path(), template).as_posix()
    sdk = f"the smallops[{extra}] extra installs its SDK" if extra else "smallops ships its SDK"
    steps = [
        f"cd {folder}",
        *([f"pip install 'smallops[{extra}]'"] if extra else []),
        f"export {key}=...",
        f"smallops run {template} --input {evals}",
        "smallops serve     # review the outputs in a browser (or: smallops review next)",
    ]
    _common.out.print(f"\nNext ({template} calls {provider}; {sdk}):", markup=False)
    for step in steps:
        _common.out.print(f"  {step}", markup=False)


#: What a template's provider needs beyond `pip install smallops`: the variable holding its key,
#: and the extra that installs its SDK (None: it ships with smallops). Postgres (`postgres`) and
#: Redis (`redis`) are extras too, for a shared log database and shared guards.
PROVIDER_NEEDS = {
    "openai": ("OPENAI_API_KEY", None),
    "anthropic": ("ANTHROPIC_API_KEY", "anthropic"),
}


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
    columns = [
        Column("name"),
        Column("model"),
        Column("prompt version", hide=4),
        Column("output", cut_to=8, hide=3),
        Column("review", cut_to=8, hide=1),
        Column("fallback", hide=2),
        Column("owner", cut_to=8, hide=5),
    ]
    if not rows:
        _common.out.print("no workflows in workflows/*.py yet", markup=False)
        return
    print_fitted(
        columns,
        [
            [
                row["name"],
                row["model"],
                row["prompt_version"],
                row["output"] or "text",
                row["review"],
                row["fallback"],
                row["owner"] or "-",
            ]
            for row in rows
        ],
    )
