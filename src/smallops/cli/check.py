"""`smallops check`: what CI should refuse before a workflow change lands."""

from __future__ import annotations

from typing import Any

import typer
from sqlalchemy import or_, select

from smallops.cli import _common
from smallops.errors import SmallopsError
from smallops.evals.baseline import baseline_path, read_baseline
from smallops.evals.dataset import load_cases
from smallops.kinds import UNJUDGED
from smallops.project import Project
from smallops.storage.schema import eval_runs
from smallops.workflow import Workflow

MIN_CASES = 20


def register(app: typer.Typer) -> None:
    app.command("check")(check_command)


def check_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per problem."),
) -> None:
    """Check every workflow: evals ran on its current prompt, pinned model, fallback, 20+ cases.

    Exit 0 when all is well, 1 listing each problem with its fix.
    """
    project = _common.project(ctx)
    workflows, broken = project.load_workflows()
    problems = [{"workflow": None, "problem": exc.message, "fix": exc.hint or ""} for exc in broken]
    evaluated = _evaluated_versions(project)
    graders = {getattr(c, "grader", None) for wf in workflows.values() for c in wf.checks.values()}
    for wf in workflows.values():
        problems += [
            {"workflow": wf.name, **p} for p in _problems(wf, evaluated, wf.name in graders)
        ]
    if as_json:
        for problem in problems:
            _common.print_json(problem)
    elif problems:
        for p in problems:
            where = f"{p['workflow']}: " if p["workflow"] else ""
            _common.out.print(f"✗ {where}{p['problem']}\n    fix: {p['fix']}", markup=False)
    else:
        _common.out.print(
            f"✓ {len(workflows)} workflows checked: evals current, models "
            "pinned, fallbacks declared, eval sets of 20+ cases",
            markup=False,
        )
    if problems:
        raise typer.Exit(1)


def _problems(
    wf: Workflow[Any], evaluated: set[tuple[str, str]], grader: bool
) -> list[dict[str, str]]:
    """A grader (a workflow other workflows' evals use) needs a pinned model, no eval set."""
    found = []
    if wf.allow_unpinned:
        found.append(
            {
                "problem": f"model {wf.model} is not pinned (allow_unpinned=True)",
                "fix": "pin a dated snapshot in the workflow's model=",
            }
        )
    if grader:
        return found
    try:
        fields = set(wf.output.model_fields) if wf.output is not None else {"text"}
        cases = load_cases(wf.evals_path, variables=wf.prompt.variables, fields=fields)
    except SmallopsError as exc:
        return [
            *found,
            {"problem": exc.message, "fix": exc.hint or f"write real examples to {wf.evals_path}"},
        ]
    if len(cases) < MIN_CASES:
        found.append(
            {
                "problem": f"its eval set has {len(cases)} cases, fewer than {MIN_CASES}",
                "fix": f"add real examples to {wf.evals_path} (`smallops review export {wf.name}` "
                "turns reviewed outputs into cases)",
            }
        )
    baseline = read_baseline(baseline_path(wf.evals_path))
    current = baseline is not None and baseline.prompt_version == wf.version.id
    if not current and (wf.name, wf.version.id) not in evaluated:
        found.append(
            {
                "problem": f"prompt version {wf.version.id} has no eval run or baseline "
                "(the prompt, schema, model or parameters changed and nobody ran the evals)",
                "fix": f"smallops eval {wf.name} --update-baseline, then commit "
                f"{baseline_path(wf.evals_path).name}",
            }
        )
    return found


def _evaluated_versions(project: Project) -> set[tuple[str, str]]:
    """(workflow, prompt version) pairs with an eval run in the log, if the log is reachable
    (a run the model left cases unanswered in evaluated nothing)."""
    try:
        with project.engine().connect() as connection:
            rows = connection.execute(
                select(eval_runs.c.workflow, eval_runs.c.prompt_version).where(
                    or_(eval_runs.c.verdict.is_(None), eval_runs.c.verdict != UNJUDGED)
                )
            )
            return {(name, version) for name, version in rows}
    except SmallopsError:
        return set()
