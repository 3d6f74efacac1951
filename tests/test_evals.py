"""`smallops eval`, `check` and `drift` on a project whose model is a scripted fake.

The fake reads tests' instructions from workflows/control.json: which cases to break, whether
the provider is down, and what a candidate model gets wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from sqlalchemy import func, select

from smallops.project import Project
from smallops.storage.schema import eval_cache, eval_results, eval_runs, runs

from conftest import smallops

CATEGORIES = ["billing", "support", "sales", "spam", "other"]

WORKFLOW = '''
"""Triage for the eval tests: answers come from a fake that obeys control.json."""

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from smallops import FakeProvider, ProviderError, Workflow
from smallops.evals.scorers import graded_by

HERE = Path(__file__).parent


class Triage(BaseModel):
    category: Literal["billing", "support", "sales", "spam", "other"]
    urgency: Literal["low", "normal", "high"]
    summary: str


class Grade(BaseModel):
    passed: bool
    reason: str


CALLS = {}


def answer(request):
    control = json.loads((HERE / "control.json").read_text())
    if control.get("down"):
        return ProviderError("connection_error", "connection refused")
    case, category = request.user.split()[1], request.user.split()[-1]
    broken = control.get("broken", []) + control.get("broken_on", {}).get(request.model, [])
    if case in control.get("flaky", []):  # every other call of the case is wrong
        CALLS[case] = CALLS.get(case, 0) + 1
        broken = broken + [case] * (CALLS[case] % 2)
    if case in control.get("invalid", []):
        return {"category": "weather"}
    if case in broken:
        category = "spam" if category != "spam" else "billing"
    return {"category": category, "urgency": "normal", "summary": f"about {category}"}


def short_summary(actual, expected, case):
    return len(actual) <= expected, f"{len(actual)} characters"


def grade(request):
    if json.loads((HERE / "control.json").read_text()).get("judge_down"):
        return ProviderError("auth_error", "HTTP 401: invalid key")
    return {"passed": "about" in request.user, "reason": "checked"}


judge = Workflow(
    "judge", model="fake:judge", prompt="judge.prompt", output=Grade, fallback="raise",
    provider=FakeProvider(grade),
)

triage = Workflow(
    "triage", model="fake:rules", prompt="triage.prompt", output=Triage, fallback="review",
    provider=FakeProvider(answer), retries=0, checks={"summary": graded_by(judge)},
)
'''


@pytest.fixture
def evals_project(tmp_path: Path) -> Path:
    """A project with a 24-case eval set; case e01 is critical."""
    root = tmp_path / "ops"
    (root / "workflows").mkdir(parents=True)
    (root / "evals").mkdir()
    (root / "smallops.toml").write_text("[smallops]\n")
    (root / "workflows" / "triage.py").write_text(WORKFLOW)
    (root / "workflows" / "triage.prompt").write_text("[user]\n{{ text }}")
    (root / "workflows" / "judge.prompt").write_text(
        "[user]\n{{ field }} {{ input }} {{ expected }} {{ actual }}"
    )
    control(root)
    lines = []
    for i in range(1, 25):
        category = CATEGORIES[i % 5]
        expected: dict[str, Any] = {"category": category}
        if i == 2:
            expected["summary"] = {"check": "short_summary", "expected": 40}
        if i == 3:
            expected["summary"] = {"graded": "says what it is about"}
        if i == 4:
            expected["summary"] = {"contains": "ABOUT"}
        lines.append(
            json.dumps(
                {
                    "id": f"e{i:02d}",
                    "input": {"text": f"case e{i:02d} about {category}"},
                    "expected": expected,
                    "tags": ["critical"] if i == 1 else [],
                }
            )
        )
    (root / "evals" / "triage.jsonl").write_text("\n".join(lines) + "\n")
    return root


def control(root: Path, **settings: Any) -> None:
    (root / "workflows" / "control.json").write_text(json.dumps(settings))


def evaluate(capsys, root: Path, *args: str) -> tuple[int, dict[str, Any] | None, str]:
    code, out, err = smallops(capsys, "-p", str(root), "eval", "triage", "--json", *args)
    return code, (json.loads(out.splitlines()[-1]) if out.strip() else None), err


def count(root: Path, table: Any, *where: Any) -> int:
    with Project(root).engine().connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
        )


def test_every_check_kind_scores_its_field(evals_project, capsys):
    code, summary, err = evaluate(capsys, evals_project)
    assert code == 0, err
    assert summary["cases"] == 24 and summary["passed"] == 24
    checks = {r["case"]: {c["field"]: c for c in r["checks"]} for r in summary["results"]}
    assert checks["e02"]["summary"]["passed"]  # a custom function from the workflow's module
    assert checks["e03"]["summary"]["detail"] == "ok"  # graded by another workflow
    assert checks["e04"]["summary"]["passed"]  # contains, ignoring case
    assert count(evals_project, runs, runs.c.workflow == "judge", runs.c.origin == "eval") == 1


def test_a_rerun_with_nothing_changed_costs_nothing(evals_project, capsys):
    evaluate(capsys, evals_project)
    calls = count(evals_project, runs, runs.c.workflow == "triage")
    code, summary, _ = evaluate(capsys, evals_project)
    assert code == 0 and summary["cached"] == 24 and summary["cost_usd"] == 0
    assert count(evals_project, runs, runs.c.workflow == "triage") == calls
    code, summary, _ = evaluate(capsys, evals_project, "--no-cache")
    assert summary["cached"] == 0
    assert count(evals_project, runs, runs.c.workflow == "triage") == 2 * calls


def test_the_cache_keeps_only_valid_outputs_and_repeats_are_distinct(evals_project, capsys):
    control(evals_project, invalid=["e05"])
    code, summary, _ = evaluate(capsys, evals_project, "--repeat", "3")
    assert code == 0
    assert count(evals_project, eval_cache) == 23 * 3  # e05 never validated: never cached
    failed = [r for r in summary["results"] if r["case"] == "e05"]
    assert len(failed) == 3 and not any(r["passed"] or r["cached"] for r in failed)
    control(evals_project)
    _, summary, _ = evaluate(capsys, evals_project, "--repeat", "3")
    fresh = [r for r in summary["results"] if not r["cached"]]
    assert {r["case"] for r in fresh} == {"e05"} and len(fresh) == 3


def test_results_are_stored_linked_to_their_runs(evals_project, capsys):
    _, summary, _ = evaluate(capsys, evals_project)
    with Project(evals_project).engine().connect() as connection:
        stored = connection.execute(
            select(eval_results.c.run_id, runs.c.origin)
            .join(runs, runs.c.id == eval_results.c.run_id)
            .where(eval_results.c.eval_run_id == summary["eval_run_id"])
        ).all()
        assert len(stored) == 24 and {origin for _, origin in stored} == {"eval"}
        assert connection.execute(select(eval_runs.c.passed)).scalar_one() == 24


def test_ci_passes_an_unchanged_prompt_and_catches_a_regression(evals_project, capsys, tmp_path):
    code, _, _ = evaluate(capsys, evals_project, "--update-baseline")
    baseline = json.loads((evals_project / "evals" / "triage.baseline.json").read_text())
    assert code == 0 and len(baseline["cases"]) == 24 and baseline["cases"]["e01"]["critical"]
    code, summary, _ = evaluate(capsys, evals_project, "--ci")
    assert code == 0 and summary["verdict"] == "pass"
    control(evals_project, broken=[f"e{i:02d}" for i in range(10, 18)])  # 8 of 24 cases break
    markdown, junit = tmp_path / "summary.md", tmp_path / "junit.xml"
    code, summary, _ = evaluate(
        capsys,
        evals_project,
        "--ci",
        "--no-cache",
        "--markdown",
        str(markdown),
        "--junit",
        str(junit),
    )
    assert code == 1 and summary["verdict"] == "regression"
    assert summary["gate"]["worse"] == 8 and summary["gate"]["sign_test_p"] < 0.05
    text = markdown.read_text()
    assert "regression" in text and "e10" in text and "sign test" in text
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "24" and suite.get("failures") == "8"
    assert len(suite.findall("testcase/failure")) == 8


def test_a_critical_case_that_fails_is_a_regression_whatever_the_statistics(evals_project, capsys):
    evaluate(capsys, evals_project, "--update-baseline")
    control(evals_project, broken=["e01"])
    code, summary, _ = evaluate(capsys, evals_project, "--ci", "--no-cache")
    assert code == 1 and summary["verdict"] == "regression"
    assert any("e01" in reason for reason in summary["gate"]["reasons"])


def test_a_small_drop_is_inconclusive_not_a_failure(evals_project, capsys):
    evaluate(capsys, evals_project, "--update-baseline")
    control(evals_project, broken=["e07"])
    code, summary, _ = evaluate(capsys, evals_project, "--ci", "--no-cache")
    assert code == 0 and summary["verdict"] == "inconclusive"


def test_a_provider_that_is_down_is_exit_2_not_a_pass_and_not_a_regression(evals_project, capsys):
    evaluate(capsys, evals_project, "--update-baseline")
    control(evals_project, down=True)
    code, summary, err = evaluate(capsys, evals_project, "--ci", "--no-cache")
    assert code == 2 and summary["verdict"] is None and summary["gate"] is None
    assert (
        summary["unanswered"]["cases"] == 24
        and "connection_error" in summary["unanswered"]["kinds"]
    )
    assert "24 of 24 cases got no answer from the model" in err and "cannot judge" in err
    with Project(evals_project).engine().connect() as connection:
        verdicts = connection.execute(select(eval_runs.c.verdict)).scalars().all()
    assert sorted(verdicts, key=str) == [None, "unjudged"]


def test_a_grader_that_gets_no_answer_leaves_its_case_unjudged(evals_project, capsys, tmp_path):
    """The judge's own outage says nothing about the output it was asked to grade."""
    evaluate(capsys, evals_project, "--update-baseline")
    control(evals_project, judge_down=True)
    junit = tmp_path / "junit.xml"
    code, summary, err = evaluate(
        capsys, evals_project, "--ci", "--no-cache", "--junit", str(junit)
    )
    assert code == 2 and summary["verdict"] is None, err
    assert summary["unanswered"] == {
        "cases": 1,
        "of": 24,
        "calls": 1,
        "of_calls": 24,
        "kinds": {"auth_error": 1},
    }
    assert "1 of 24 cases got no answer from the model (auth_error 1)" in err
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("errors") == "1" and suite.get("failures") == "0"
    [error] = suite.findall("testcase/error")
    assert error.get("message").startswith("no answer from the model: judge: auth_error")


def test_an_update_of_the_baseline_is_refused_while_cases_are_unanswered(evals_project, capsys):
    evaluate(capsys, evals_project, "--update-baseline")
    baseline = evals_project / "evals" / "triage.baseline.json"
    before = baseline.read_text()
    control(evals_project, down=True)
    code, _, err = evaluate(capsys, evals_project, "--update-baseline", "--no-cache")
    assert code == 2 and "the baseline was not written" in err
    assert baseline.read_text() == before


def test_a_deleted_critical_case_is_a_regression_until_the_baseline_drops_it(evals_project, capsys):
    """The critical flags come from the baseline: removing the case (or its tag) is no way out."""
    evaluate(capsys, evals_project, "--update-baseline")
    evals = evals_project / "evals" / "triage.jsonl"
    lines = evals.read_text().splitlines()
    evals.write_text("\n".join(lines[1:]) + "\n")  # e01, the critical case, is gone
    code, summary, _ = evaluate(capsys, evals_project, "--ci")
    assert code == 1 and summary["verdict"] == "regression"
    assert "critical case e01 of the baseline is missing now" in summary["gate"]["reasons"][0]
    evaluate(capsys, evals_project, "--update-baseline")  # on purpose, in a reviewed commit
    code, summary, _ = evaluate(capsys, evals_project, "--ci")
    assert code == 0 and summary["verdict"] == "pass"


def test_a_critical_case_that_lost_its_tag_is_still_critical(evals_project, capsys):
    evaluate(capsys, evals_project, "--update-baseline")
    evals = evals_project / "evals" / "triage.jsonl"
    evals.write_text(evals.read_text().replace('"tags": ["critical"]', '"tags": []'))
    control(evals_project, broken=["e01"])
    code, summary, _ = evaluate(capsys, evals_project, "--ci", "--no-cache")
    assert code == 1 and "critical case e01 went from pass to fail" in summary["gate"]["reasons"]


def test_a_critical_case_must_pass_every_repeat(evals_project, capsys):
    """With --repeat 2, a critical case that drops from 1.0 to 0.5 fails; another case does not."""
    evaluate(capsys, evals_project, "--update-baseline", "--repeat", "2")
    control(evals_project, flaky=["e01", "e07"])  # each fails one of its two repeats
    code, summary, _ = evaluate(capsys, evals_project, "--ci", "--no-cache", "--repeat", "2")
    assert code == 1 and summary["verdict"] == "regression"
    assert summary["gate"]["reasons"][0] == "critical case e01 went from pass to fail"
    assert summary["gate"]["worse"] == 1 and summary["passed"] == 23


def test_ci_without_a_baseline_says_how_to_make_one(evals_project, capsys):
    code, _, err = evaluate(capsys, evals_project, "--ci")
    assert code == 2 and "--update-baseline" in err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "input": {"text": "a"}, "expected": {"colour": "red"}}', "'colour'"),
        ('{"id": "x", "input": {"body": "a"}, "expected": {}}', "lacks input 'text'"),
        ('{"id": "e01", "input": {"text": "a"}}', "repeats line 1"),
        ("{broken", "not valid JSON"),
        ('{"id": "x", "input": {"text": 1' + "0" * 5000 + "}}", "a number has 5001 digits"),
    ],
)
def test_eval_file_errors_name_the_file_the_line_and_the_problem(
    evals_project, capsys, line, message
):
    path = evals_project / "evals" / "triage.jsonl"
    path.write_text(path.read_text() + line + "\n")
    code, _, err = evaluate(capsys, evals_project)
    assert code == 2 and "triage.jsonl, line 25" in err and message in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_check_catches_an_edited_prompt_until_the_evals_run_again(evals_project, capsys):
    def check() -> tuple[int, str]:
        code, out, _ = smallops(capsys, "-p", str(evals_project), "check")
        return code, out

    code, out = check()
    assert code == 1 and "no eval run or baseline" in out and "fewer than" not in out
    evaluate(capsys, evals_project, "--update-baseline")
    assert check()[0] == 0
    prompt = evals_project / "workflows" / "triage.prompt"
    prompt.write_text("[user]\nTriage this: {{ text }}")
    code, out = check()
    assert code == 1 and "triage: prompt version" in out and "--update-baseline" in out
    evaluate(capsys, evals_project, "--update-baseline")
    assert check()[0] == 0


def test_check_does_not_count_an_eval_run_that_got_no_answers(evals_project, capsys):
    control(evals_project, down=True)
    assert evaluate(capsys, evals_project)[0] == 2
    code, out, _ = smallops(capsys, "-p", str(evals_project), "check")
    assert code == 1 and "no eval run or baseline" in out


def test_check_lists_unpinned_models_missing_fallbacks_and_small_eval_sets(evals_project, capsys):
    module = evals_project / "workflows" / "triage.py"
    module.write_text(
        module.read_text().replace(
            'model="fake:rules", prompt="triage.prompt", output=Triage, fallback="review",',
            'model="fake:rules", prompt="triage.prompt", output=Triage, fallback="review", '
            "allow_unpinned=True,",
        )
    )
    (evals_project / "workflows" / "other.py").write_text(
        "from smallops import Workflow\n"
        'other = Workflow("other", model="fake:x", prompt="triage.prompt")\n'
    )
    evals = evals_project / "evals" / "triage.jsonl"
    evals.write_text("\n".join(evals.read_text().splitlines()[:10]) + "\n")
    code, out, _ = smallops(capsys, "-p", str(evals_project), "check", "--json")
    problems = [json.loads(line) for line in out.splitlines()]
    text = " ".join(p["problem"] for p in problems)
    assert code == 1
    assert "not pinned" in text and "declares no fallback" in text and "10 cases" in text
    assert all(p["fix"] for p in problems)


def test_drift_compares_a_candidate_model_case_by_case(evals_project, capsys):
    control(evals_project, broken_on={"rules-v2": [f"e{i:02d}" for i in range(5, 15)]})
    code, out, _ = smallops(
        capsys,
        "-p",
        str(evals_project),
        "drift",
        "triage",
        "--candidate",
        "fake:rules-v2",
        "--json",
    )
    comparison = json.loads(out)
    assert code == 1 and comparison["verdict"] == "regression"
    assert comparison["fields"]["category"]["worse"] == 10
    assert len(comparison["changed_cases"]) == 10
    assert "keep the pinned model" in comparison["recommendation"]
    code, out, _ = smallops(
        capsys,
        "-p",
        str(evals_project),
        "drift",
        "triage",
        "--candidate",
        "fake:rules-v3",
        "--json",
    )
    assert code == 0 and json.loads(out)["verdict"] == "pass"


def test_drift_measures_both_models_the_same_way_in_one_run(evals_project, capsys):
    """Answers come from the cache only where both models have one; cost and latency only from
    calls made now, never from the cache as if measured."""

    def drift(*args: str) -> tuple[int, dict[str, Any]]:
        argv = ["-p", str(evals_project), "drift", "triage", "--candidate", "fake:rules-v2"]
        code, out, _ = smallops(capsys, *argv, "--json", *args)
        return code, json.loads(out)

    evaluate(capsys, evals_project)  # the pinned model's answers are all in the cache
    code, first = drift()
    assert code == 0 and first["measured_calls"] == {"pinned": 24, "candidate": 24}
    assert None not in first["median_latency_ms"].values()
    code, again = drift()  # now both models have every answer cached
    assert again["measured_calls"] == {"pinned": 0, "candidate": 0}
    assert again["cost_usd"] == again["median_latency_ms"] == {"pinned": None, "candidate": None}
    code, out, _ = smallops(
        capsys, "-p", str(evals_project), "drift", "triage", "--candidate", "fake:rules-v2"
    )
    assert re.search(r"cost\s+not measured\s+not measured", out)
    assert "--no-cache measures cost and latency" in out and "$0.0000" not in out
    code, fresh = drift("--no-cache")
    assert fresh["measured_calls"] == {"pinned": 24, "candidate": 24}
    assert None not in fresh["median_latency_ms"].values()


def test_report_shows_served_model_changes_and_weekly_distribution_shifts(tmp_path, capsys):
    """Production only: a silent upgrade and a shift in `category` show; eval runs do not."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from smallops import FakeProvider, FakeReply, Settings, Workflow
    from smallops.storage import rollups

    (tmp_path / "smallops.toml").write_text('[smallops]\ndatabase_url = "sqlite:///log.db"\n')
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    state = {"model": "rules-v1", "category": "billing"}

    def answer(_request):
        body = {"category": state["category"], "urgency": "low", "summary": "x"}
        return FakeReply(text=json.dumps(body), model=state["model"])

    from models import Triage

    wf = Workflow(
        "triage",
        model="fake:rules-v1",
        prompt="p.prompt",
        output=Triage,
        fallback="review",
        provider=FakeProvider(answer),
        base_dir=tmp_path,
        settings=Settings(root=tmp_path, database_url=f"sqlite:///{tmp_path}/log.db"),
    )
    old = [wf.run(text="x").run_id for _ in range(40)]
    state.update(model="rules-v2", category="spam")
    for i in range(40):
        state["category"] = "spam" if i % 4 else "billing"
        wf.run(text="x")
    wf.replace(origin="eval").run(text="eval traffic")
    engine = wf.plan().writer.store.engine
    wf.plan().writer.flush()
    last_week = datetime.now(timezone.utc) - timedelta(days=8)
    with engine.begin() as connection:
        connection.execute(update(runs).where(runs.c.id.in_(old)).values(started_at=last_week))
    rollups.rebuild(engine)  # the runs were edited: their rollups follow
    code, out, _ = smallops(capsys, "-p", str(tmp_path), "report", "--since", "30d", "--json")
    [row] = json.loads(out)
    assert code == 0 and row["calls"] == 80  # the eval run is not production traffic
    assert [m["model"] for m in row["model_changes"]] == ["rules-v1", "rules-v2"]
    [category] = [s for s in row["distribution_shifts"] if s["field"] == "category"]
    assert category["shifted"] and category["p_value"] < 1e-6
    assert category["this_week"] == {"spam": 30, "billing": 10}
    code, out, _ = smallops(capsys, "-p", str(tmp_path), "report", "--since", "30d")
    assert "model changed" in out and "rules-v1 -> rules-v2" in out and "shifted" in out


def test_report_shows_a_secondary_model_fallback_as_fallback_not_as_a_model_change(
    tmp_path, capsys, make_workflow, settings, emulator, database_url
):
    """The primary route decides model changes and drift; the secondary's calls are fallback."""
    from dataclasses import replace

    from smallops import secondary

    from conftest import EMAIL
    from emulators import ok, status

    (tmp_path / "smallops.toml").write_text(f'[smallops]\ndatabase_url = "{database_url}"\n')
    wf = make_workflow(
        fallback=secondary("anthropic:claude-sonnet-4-6"),
        retries=0,
        settings=replace(settings, database_url=database_url),
    )
    wf.run(**EMAIL)
    emulator.script(status(500), ok(), status(500), ok())  # OpenAI fails twice; Anthropic answers
    fell_back = [wf.run(**EMAIL), wf.run(**EMAIL)]
    assert {r.model for r in fell_back} == {"claude-sonnet-4-6"}
    wf.run(**EMAIL)
    wf.plan().writer.flush()
    code, out, _ = smallops(capsys, "-p", str(tmp_path), "report", "--json")
    [row] = json.loads(out)
    assert code == 0 and row["statuses"]["fallback_secondary"] == 2
    assert [m["model"] for m in row["model_changes"]] == ["gpt-4o-mini-2024-07-18"]
    assert row["models_served"] == {"gpt-4o-mini-2024-07-18": 2}  # the failed calls served none
    assert row["fallback"] == {"calls": 2, "models_served": {"claude-sonnet-4-6": 2}}
    code, out, _ = smallops(capsys, "-p", str(tmp_path), "report")
    assert "model changed" not in out
    assert "fallback  2 calls went to the secondary model (claude-sonnet-4-6 x2)" in out


def test_every_template_evaluates_with_a_fake_model(tmp_path, capsys):
    """The scaffolded eval sets load and score through the runner (a fake stands in)."""
    import asyncio

    from smallops.evals.dataset import load_cases
    from smallops.evals.runner import run_eval
    from smallops.providers.fake import FakeProvider
    from smallops.scaffold import TEMPLATE_NAMES

    for template in TEMPLATE_NAMES:
        root = tmp_path / template
        assert smallops(capsys, "init", str(root), "--template", template)[0] == 0
        wf = Project(root).workflow(template)
        cases = load_cases(
            wf.evals_path, variables=wf.prompt.variables, fields=set(wf.output.model_fields)
        )

        def oracle(request, cases=cases, wf=wf):
            for case in cases:
                if wf.prompt.render(case.input) == request.messages:
                    example = json.loads(FakeProvider().responder(request))
                    return {**example, **case.expected}
            raise AssertionError("unknown case")

        fake = wf.replace(model="fake:oracle", provider=FakeProvider(oracle))
        run = asyncio.run(run_eval(fake, cases, concurrency=8))
        assert run.passed == len(cases) >= 20, template


@pytest.mark.parametrize(
    ("spec", "actual", "passed"),
    [
        ({"one_of": ["billing", "support"]}, "support", True),
        ({"one_of": ["billing", "support"]}, "spam", False),
        ({"regex": "^inv.*e$"}, "invoice", True),
        ({"regex": "^inv"}, "refund", False),
        ({"contains": "MAY"}, "the may invoice", True),
        ({"contains": "june"}, "the may invoice", False),
        ({"approx": 10.0, "tolerance": 0.5}, 10.4, True),
        ({"approx": 10.0, "tolerance": 0.5}, 10.6, False),
        ({"exact": "billing"}, "billing", True),
        ("billing", "Billing", False),
    ],
)
def test_each_case_level_check_passes_and_fails(spec, actual, passed):
    """Every operator an eval case may use decides on its own, never by falling back to exact."""
    import asyncio
    from types import SimpleNamespace

    from smallops.evals.dataset import Case
    from smallops.evals.scorers import check_case

    workflow = SimpleNamespace(checks={}, name="w", module=None)
    case = Case("c1", {}, {"field": spec})
    [result] = asyncio.run(check_case(case, {"field": actual}, None, workflow))
    assert result.passed is passed and result.error is False
