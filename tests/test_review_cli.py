"""`smallops review`: the queue from a terminal, for people (next) and scripts (approve ...)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EMAIL, GOOD, smallops
from emulators import ok, refusal, truncated


@pytest.fixture
def queued(project, emulator, capsys) -> list[str]:
    """Four email-triage runs waiting for review: three outputs and one refusal."""
    emulator.script(ok(GOOD), ok(GOOD), ok(GOOD), refusal("no"))
    ids = []
    for i in range(4):
        _, out, _ = smallops(
            capsys,
            "-p",
            str(project),
            "run",
            "email-triage",
            "--json",
            json.dumps({**EMAIL, "subject": f"s{i}"}),
            "--json",
        )
        ids.append(json.loads(out)["run_id"])
    return ids


def review(capsys, project: Path, *args: str) -> tuple[int, str, str]:
    return smallops(capsys, "-p", str(project), "review", *args)


def test_list_shows_the_pending_items(project, queued, capsys):
    code, out, _ = review(capsys, project, "list", "--json")
    items = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [i["run_id"] for i in items] == queued
    assert items[-1]["reason"] == "fallback" and items[-1]["error_type"] == "refused"
    code, out, _ = review(capsys, project, "list")
    assert code == 0 and "fallback: refused" in out


def test_scripts_approve_correct_and_reject_by_short_id(project, queued, capsys):
    a, b, c, d = (run[-12:] for run in queued)
    assert review(capsys, project, "approve", a, "--reviewer", "ann")[1].startswith("approved")
    fixed = json.dumps({**GOOD, "category": "sales"})
    code, out, _ = review(
        capsys, project, "correct", b, "--output", fixed, "--reviewer", "bob", "--json"
    )
    assert code == 0 and json.loads(out)["output"]["category"] == "sales"
    assert review(capsys, project, "reject", c, "--reason", "duplicate")[0] == 0
    human = json.dumps({**GOOD, "summary": "Written by a human."})
    assert review(capsys, project, "correct", d, "--output", human)[0] == 0
    code, out, _ = review(capsys, project, "list", "--state", "all", "--json")
    states = {json.loads(line)["run_id"]: json.loads(line)["state"] for line in out.splitlines()}
    assert list(states.values()).count("corrected") == 2 and len(states) == 4


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("reject", "{id}"), 2, "needs a reason"),
        (("correct", "{id}", "--output", '{"category": "weather"}'), 2, "does not fit Triage"),
        (("correct", "{id}", "--output", "[" * 100_000 + "]" * 100_000), 2, "nest more than"),
        (("approve", "ffffffffffff"), 1, "no review item"),
        (("approve", "{fallback}"), 2, "no output to approve"),
    ],
)
def test_bad_decisions_are_one_line_errors_and_change_nothing(
    project, queued, capsys, args, code, message
):
    args = tuple(a.replace("{id}", queued[0]).replace("{fallback}", queued[3]) for a in args)
    got, _, err = review(capsys, project, *args)
    assert got == code and message in err and len(err.strip().splitlines()) == 1
    _, out, _ = review(capsys, project, "list", "--json")
    assert len(out.splitlines()) == 4


def test_a_decision_on_an_item_someone_else_holds_is_refused(project, queued, capsys):
    from smallops.project import Project
    from smallops.review.queue import ReviewQueue

    ReviewQueue(Project(project).engine()).claim(queued[0], "ann")
    code, _, err = review(capsys, project, "approve", queued[0], "--reviewer", "bob")
    assert code == 1 and "held by ann" in err


def test_interactive_review_approves_corrects_rejects_and_skips(project, queued, tmp_path):
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, sys\n"
        "path = sys.argv[1]\n"
        "data = json.load(open(path))\n"
        "data['urgency'] = 'high'\n"
        "json.dump(data, open(path, 'w'))\n"
    )
    script = Path(sys.executable).parent / "smallops"
    env = {**os.environ, "EDITOR": f"{sys.executable} {editor}", "SMALLOPS_REVIEWER": "dee"}
    done = subprocess.run(
        [str(script), "-p", str(project), "review", "next"],
        input="a\nc\nr\nnot for us\ns\nq\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "3 decided as dee" in done.stdout
    from smallops.project import Project
    from smallops.review.queue import ReviewQueue

    queue = ReviewQueue(Project(project).engine())
    states = [queue.item(run)["state"] for run in queued]
    assert states == ["approved", "corrected", "rejected", "pending"]
    assert queue.item(queued[1])["final_output"]["urgency"] == "high"
    assert queue.item(queued[3])["claimed_by"] is None  # skipped: back in the queue


def test_stats_report_classes_with_bounds_and_export_appends_cases(project, queued, capsys):
    for run in queued[:3]:
        review(capsys, project, "approve", run)
    code, out, _ = review(capsys, project, "stats", "--json")
    rows = {row["class_key"]: row for row in json.loads(out)}
    assert code == 0 and rows["category=billing"]["reviews"] == 3
    assert rows["category=billing"]["approvals"] == 3
    assert rows["category=billing"]["lower_bound"] == pytest.approx(0.05 ** (1 / 3), abs=1e-4)
    assert "more reviews" in rows["category=billing"]["recommendation"]
    assert rows["category=spam"]["reviews"] == 0
    code, out, _ = review(capsys, project, "export", "email-triage")
    assert code == 0 and out.startswith("3 cases added")
    assert review(capsys, project, "export", "email-triage")[1].startswith("0 cases added")


FAILED_CALLS = {  # what the model answers to one call that fails (the repair included)
    "truncated": [truncated()],
    "invalid_json": [ok("It is about billing, I think.")] * 2,
    "schema_mismatch": [ok({"category": "weather"})] * 2,
}


@pytest.mark.parametrize("failure", sorted(FAILED_CALLS))
def test_approving_an_output_that_failed_the_schema_is_one_line_and_exit_2(
    project, emulator, capsys, failure
):
    emulator.script(*FAILED_CALLS[failure])
    [run_id] = _run(capsys, project, EMAIL)
    code, _, err = review(capsys, project, "approve", run_id)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot be approved" in err and failure in err and "correct it" in err
    _, out, _ = review(capsys, project, "list", "--json")
    assert json.loads(out)["state"] == "pending"


def test_review_next_refuses_to_approve_a_failed_output_and_takes_a_rejection(
    project, emulator, capsys
):
    emulator.script(truncated())
    [run_id] = _run(capsys, project, EMAIL)
    env = {**os.environ, "SMALLOPS_REVIEWER": "dee"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "smallops"), "-p", str(project), "review", "next"],
        input="a\nr\ncut off\nq\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    refusals = [line for line in done.stderr.splitlines() if "cannot be approved" in line]
    assert len(refusals) == 1 and "truncated" in refusals[0]
    assert "1 decided as dee" in done.stdout
    from smallops.project import Project
    from smallops.review.queue import ReviewQueue

    assert ReviewQueue(Project(project).engine()).item(run_id)["state"] == "rejected"


def test_export_skips_an_invalid_expected_value_and_says_so(project, emulator, capsys):
    """An item approved before approval checked the output never reaches the eval set."""
    from smallops.project import Project
    from smallops.review.queue import ReviewQueue

    emulator.script(ok(GOOD), *FAILED_CALLS["schema_mismatch"])
    good, broken = _run(capsys, project, EMAIL, {**EMAIL, "subject": "again"})
    ReviewQueue(Project(project).engine()).decide(broken, "ann", "approve")  # as before
    assert review(capsys, project, "approve", good)[0] == 0
    target = project / "evals" / "reviewed.jsonl"
    code, out, err = review(capsys, project, "export", "email-triage", "--to", str(target))
    assert code == 0 and out.startswith("1 cases added")
    assert err.strip() == (
        f"note: 1 reviewed items skipped: they would not be valid eval cases (run {broken}: "
        "it was approved as the model's failed answer (schema_mismatch) left it)"
    )
    assert [json.loads(line)["id"] for line in target.read_text().splitlines()] == [
        f"review-{good}"
    ]


def _run(
    capsys, project: Path, *emails: dict[str, str], workflow: str = "email-triage"
) -> list[str]:
    ids = []
    for email in emails:
        code, out, err = smallops(
            capsys, "-p", str(project), "run", workflow, "--json", json.dumps(email), "--json"
        )
        assert code == 0, err
        ids.append(json.loads(out)["run_id"])
    return ids
