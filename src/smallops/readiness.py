"""Is a project ready to ship? What CI should refuse before a workflow change lands.

Each workflow needs a pinned model, an eval set of MIN_CASES or more, and evals run on its
current prompt version (a committed baseline of that version, or an eval run in the log that
judged something). A grader, a workflow other workflows' evals use, needs only the pinned model.
A workflow module that does not load is a problem too, and so is a gateway route naming a
workflow the project does not define (the gateway would not start). Each problem comes with its
fix. A workflow whose alerts would reach nobody (no owner, or an owner with no channel) is a
warning: worth fixing, not a reason to refuse the change.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

from smallops.alert_config import AlertSettings
from smallops.alerts.engine import PROJECT
from smallops.errors import ConfigError, SmallopsError
from smallops.evals.baseline import baseline_path, read_baseline
from smallops.evals.dataset import workflow_cases
from smallops.gateway_config import GatewaySettings, check_workflows
from smallops.project import Project
from smallops.storage.eval_log import evaluated_versions
from smallops.workflow import Workflow

MIN_CASES = 20


@dataclass(frozen=True)
class Problem:
    """One thing to fix before shipping; `workflow` is None for a module that did not load. A
    `warning` is worth fixing but does not stop a change from landing."""

    workflow: str | None
    problem: str
    fix: str
    level: Literal["problem", "warning"] = "problem"


@dataclass(frozen=True)
class Readiness:
    """The workflows that loaded, and every problem found."""

    workflows: int
    problems: list[Problem]

    @property
    def ready(self) -> bool:
        return not any(p.level == "problem" for p in self.problems)


def check_readiness(project: Project) -> Readiness:
    """Every workflow of the project against the rules above."""
    workflows, broken = project.load_workflows()
    problems = [Problem(None, exc.message, exc.hint or "") for exc in broken]
    evaluated = _evaluated_versions(project)
    graders = {getattr(c, "grader", None) for wf in workflows.values() for c in wf.checks.values()}
    for wf in workflows.values():
        problems += workflow_problems(wf, evaluated, grader=wf.name in graders)
        problems += alert_warnings(wf, project.settings.alerts)
    if not broken:  # a module that did not load may define the workflow a table names
        problems += alert_table_warnings(project.settings.alerts, tuple(workflows))
        problems += gateway_problems(project.settings.gateway, tuple(workflows))
    return Readiness(len(workflows), problems)


def gateway_problems(gateway: GatewaySettings, workflows: tuple[str, ...]) -> list[Problem]:
    """A workflow route that names no workflow: `smallops gateway` would refuse to start."""
    try:
        check_workflows(gateway, workflows)
    except ConfigError as exc:
        return [Problem(None, exc.message, exc.hint or "")]
    return []


def alert_table_warnings(alerts: AlertSettings, workflows: tuple[str, ...]) -> list[Problem]:
    """A warning for each [alerts.workflows.NAME] that names no workflow: its channels,
    escalation and thresholds apply to nothing (e.g. the module's name, email_triage, for the
    workflow email-triage)."""
    found = []
    for name in alerts.workflows:
        if name == PROJECT or name in workflows:
            continue
        close = difflib.get_close_matches(name.replace("_", "-"), workflows, n=1)
        found.append(
            Problem(
                name,
                f"[alerts.workflows.{name}] in smallops.toml names no workflow: its channels,"
                " escalation and rules apply to nothing",
                f"did you mean [alerts.workflows.{close[0]}]?"
                if close
                else f"the workflows are: {', '.join(sorted(workflows)) or 'none'}",
                "warning",
            )
        )
    return found


def alert_warnings(wf: Workflow[Any], alerts: AlertSettings) -> list[Problem]:
    """Warnings when nobody would hear about the workflow's alerts: no owner, or an owner no
    channel reaches."""
    if not wf.owner:
        return [
            Problem(
                wf.name,
                "it has no owner: nobody hears about its alerts",
                'set owner= on the Workflow (e.g. owner="ops@acme.example")',
                "warning",
            )
        ]
    if not alerts.route(wf.name, wf.owner).first:
        return [
            Problem(
                wf.name,
                f"its owner {wf.owner!r} has no alert channel: nobody hears about its alerts",
                f'in smallops.toml, [alerts.owners] "{wf.owner}" = ["a channel"] (or '
                "[alerts.workflows.NAME] channels = [...]); `smallops alerts test` tries it",
                "warning",
            )
        ]
    return []


def workflow_problems(
    wf: Workflow[Any], evaluated: set[tuple[str, str]], *, grader: bool = False
) -> list[Problem]:
    """One workflow's problems; `evaluated` holds the (workflow, prompt version) pairs with an
    eval run in the log."""
    found = []
    if wf.allow_unpinned:
        found.append(
            Problem(
                wf.name,
                f"model {wf.model} is not pinned (allow_unpinned=True)",
                "pin a dated snapshot in the workflow's model=",
            )
        )
    if grader:
        return found
    try:
        cases = workflow_cases(wf)
    except SmallopsError as exc:
        return [
            *found,
            Problem(wf.name, exc.message, exc.hint or f"write real examples to {wf.evals_path}"),
        ]
    if len(cases) < MIN_CASES:
        found.append(
            Problem(
                wf.name,
                f"its eval set has {len(cases)} cases, fewer than {MIN_CASES}",
                f"add real examples to {wf.evals_path} (`smallops review export {wf.name}` "
                "turns reviewed outputs into cases)",
            )
        )
    baseline = read_baseline(baseline_path(wf.evals_path))
    current = baseline is not None and baseline.prompt_version == wf.version.id
    if not current and (wf.name, wf.version.id) not in evaluated:
        found.append(
            Problem(
                wf.name,
                f"prompt version {wf.version.id} has no eval run or baseline "
                "(the prompt, schema, model or parameters changed and nobody ran the evals)",
                f"smallops eval {wf.name} --update-baseline, then commit "
                f"{baseline_path(wf.evals_path).name}",
            )
        )
    return found


def _evaluated_versions(project: Project) -> set[tuple[str, str]]:
    """What the log says was evaluated, if the log is reachable (nothing, if it is not)."""
    try:
        return evaluated_versions(project.engine())
    except SmallopsError:
        return set()
