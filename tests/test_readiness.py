"""The readiness check (smallops.readiness): what `smallops check` refuses before a workflow
change lands, on a real project folder whose workflows use the fake provider."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from smallops.evals.gate import prepare_eval, run_gate
from smallops.project import Project
from smallops.readiness import MIN_CASES, Problem, check_readiness, workflow_problems

WORKFLOWS = """
from smallops import Workflow
from smallops.evals.scorers import graded_by

judge = Workflow("ready-judge", model="fake:judge", prompt="ready.prompt", fallback="raise")
ready = Workflow(
    "ready", model="fake:rules", prompt="ready.prompt", fallback="review",
    checks={"text": graded_by(judge)},
)
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A project with one workflow, its eval set of MIN_CASES cases, and a grader."""
    root = tmp_path / "ops"
    (root / "workflows").mkdir(parents=True)
    (root / "evals").mkdir()
    (root / "smallops.toml").write_text("[smallops]\n")
    (root / "workflows" / "ready_flows.py").write_text(WORKFLOWS)
    (root / "workflows" / "ready.prompt").write_text("[user]\n{{ text }}")
    write_cases(root, MIN_CASES)
    return root


def write_cases(root: Path, n: int) -> None:
    lines = [
        json.dumps({"id": f"c{i}", "input": {"text": f"c{i}"}, "expected": {}}) for i in range(n)
    ]
    (root / "evals" / "ready.jsonl").write_text("\n".join(lines) + "\n")


def problems_of(root: Path) -> list[Problem]:
    """The problems, warnings (alerts that reach nobody) left out."""
    readiness = check_readiness(Project(root))
    problems = [p for p in readiness.problems if p.level == "problem"]
    assert readiness.workflows == 2 and readiness.ready == (not problems)
    return problems


def test_a_workflow_whose_alerts_reach_nobody_is_a_warning_not_a_problem(root):
    warnings = [p for p in check_readiness(Project(root)).problems if p.level == "warning"]
    assert {p.workflow for p in warnings} == {"ready", "ready-judge"}
    assert all("has no owner" in p.problem for p in warnings)


def test_an_owner_no_channel_reaches_is_a_warning_until_one_does():
    from types import SimpleNamespace

    from smallops.alert_config import parse_alerts
    from smallops.readiness import alert_warnings

    wf: Any = SimpleNamespace(name="triage", owner="ann")
    [warning] = alert_warnings(wf, parse_alerts({}))
    assert "owner 'ann' has no alert channel" in warning.problem and warning.level == "warning"
    chat = {"channels": {"chat": {"kind": "slack"}}}
    assert alert_warnings(wf, parse_alerts({**chat, "owners": {"ann": ["chat"]}})) == []
    mail = {"channels": {"mail": {"kind": "email", "host": "smtp.example", "from": "a@b.example"}}}
    addressed: Any = SimpleNamespace(name="triage", owner="ann@example.com")
    assert alert_warnings(addressed, parse_alerts(mail)) == []  # mail goes to the owner


def test_a_workflow_nobody_evaluated_is_not_ready_until_its_evals_run(root):
    [problem] = problems_of(root)  # the grader needs no eval set of its own
    assert problem.workflow == "ready" and "has no eval run or baseline" in problem.problem
    assert problem.fix.startswith("smallops eval ready --update-baseline")

    project = Project(root)
    wf = project.workflow("ready")
    asyncio.run(run_gate(prepare_eval(wf)))  # an eval run in the log counts
    assert problems_of(root) == []


def test_a_baseline_of_the_current_prompt_counts_as_evaluated(root):
    wf = Project(root).workflow("ready")
    asyncio.run(run_gate(prepare_eval(wf), update_baseline=True))
    assert workflow_problems(wf, evaluated=set()) == []
    edited = root / "workflows" / "ready.prompt"
    edited.write_text("[user]\nRead this: {{ text }}")
    [problem] = problems_of(root)
    assert "prompt version" in problem.problem


def test_small_eval_sets_unpinned_models_and_broken_modules_are_problems(root):
    write_cases(root, MIN_CASES - 5)
    module = root / "workflows" / "ready_flows.py"
    module.write_text(
        module.read_text().replace('fallback="review",', 'fallback="review", allow_unpinned=True,')
    )
    (root / "workflows" / "broken_flows.py").write_text(
        "from smallops import Workflow\n"
        'other = Workflow("other", model="fake:x", prompt="ready.prompt")\n'
    )
    found = problems_of(root)
    assert [p.workflow for p in found] == [None, "ready", "ready", "ready"]
    texts = " | ".join(p.problem for p in found)
    assert "not pinned" in texts and f"has {MIN_CASES - 5} cases" in texts
    assert "declares no fallback" in found[0].problem and all(p.fix for p in found[1:])


def test_a_missing_eval_set_says_where_to_write_one(root):
    (root / "evals" / "ready.jsonl").unlink()
    wf = Project(root).workflow("ready")
    [problem] = workflow_problems(wf, evaluated={("ready", wf.version.id)})
    assert "does not exist" in problem.problem and problem.fix


def test_a_grader_needs_only_a_pinned_model(root):
    judge = Project(root).workflow("ready-judge")
    assert workflow_problems(judge, evaluated=set(), grader=True) == []
    assert workflow_problems(judge, evaluated=set())  # as a workflow of its own it has no evals
