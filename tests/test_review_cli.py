"""`smallops review`: the queue from a terminal, for people (next) and scripts (approve ...)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
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
        (("correct", "{id}", "--output", "[1" + "0" * 5000 + "]"), 2, "has 5001 digits"),
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


def test_stats_after_a_prompt_edit_show_the_earlier_versions_reviews(project, queued, capsys):
    """After a prompt edit nothing counts yet: stats say how many reviews the earlier prompt
    versions have, and that graduation restarts with each version."""
    for run in queued[:3]:
        review(capsys, project, "approve", run)
    prompt = project / "workflows" / "email_triage.prompt"
    prompt.write_text(prompt.read_text() + "\nAnswer briefly.\n")
    code, out, _ = review(capsys, project, "stats", "--json")
    billing = next(row for row in json.loads(out) if row["class_key"] == "category=billing")
    assert code == 0 and billing["reviews"] == 0
    assert list(billing["earlier_reviews"].values()) == [3]
    code, out, _ = review(capsys, project, "stats")
    assert code == 0
    assert "graduation restarts with each prompt version" in " ".join(out.split())
    assert f"{next(iter(billing['earlier_reviews']))}: 3 reviews" in out


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


WHSEC_A = "whsec_" + "YS1zZWNyZXQtb2Ytd29ya2Zsb3ctYS0xMjM0NTY="
WHSEC_B = "whsec_" + "Yi1zZWNyZXQtb2Ytd29ya2Zsb3ctYi02NTQzMjE="


def _with_webhooks(project: Path, url: str) -> None:
    """email-triage signs with A_SECRET; email-triage-b, the same workflow, with B_SECRET."""
    module = project / "workflows" / "email_triage.py"
    text = module.read_text().replace(
        'owner="ops@example.com",',
        f'owner="ops@example.com",\n    webhook="{url}",\n    webhook_secret_env="A_SECRET",',
    )
    text += (
        "\nemail_triage_b = email_triage.replace("
        'name="email-triage-b", webhook_secret_env="B_SECRET")\n'
    )
    module.write_text(text)


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


def test_a_decision_sends_its_webhook_before_the_command_returns(
    project, capsys, database_url, monkeypatch
):
    from webhook_receiver import Receiver

    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    monkeypatch.setenv("A_SECRET", WHSEC_A)
    with Receiver() as receiver:
        _with_webhooks(project, receiver.url)
        [run_id] = _run(capsys, project, EMAIL)
        code, _, err = review(capsys, project, "approve", run_id)
        assert code == 0 and err == ""
        assert len(receiver.accepted) == 1 and run_id in receiver.accepted[0][0]
        assert review(capsys, project, "deliver")[1] == "0 delivered, 0 to retry later\n"


def test_a_webhook_the_command_could_not_send_is_sent_by_review_deliver_straight_after(
    project, capsys, database_url, monkeypatch
):
    """The command waits a few seconds for its webhook, then gives back the lease: `review
    deliver` run straight after sends it, rather than a minute later."""
    from smallops.cli import review as review_cli

    from webhook_receiver import Receiver

    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    monkeypatch.setenv("A_SECRET", WHSEC_A)
    monkeypatch.setattr(review_cli, "SEND_WITHIN", 2.0)
    with Receiver(stalls=1) as receiver:
        _with_webhooks(project, receiver.url)
        [run_id] = _run(capsys, project, EMAIL)
        code, _, err = review(capsys, project, "approve", run_id)
        assert code == 0 and len(receiver.ids) == 1  # sent, and stuck at the receiver
        assert err == (
            f"note: the webhook of run {run_id} was not sent within 2 s; "
            "`smallops serve` or `smallops review deliver` sends it\n"
        )
        code, out, _ = review(capsys, project, "deliver")
        assert code == 0 and out == "1 delivered, 0 to retry later\n"
        assert len(receiver.accepted) == 1 and run_id in receiver.accepted[0][0]


def test_review_deliver_signs_each_workflows_webhooks_with_its_own_secret(
    project, capsys, database_url, monkeypatch
):
    """Two workflows, two secrets, one URL; a missing secret is one line and exit 2, and the
    other workflow's webhooks still go."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from webhook_receiver import Receiver

    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    monkeypatch.setenv("A_SECRET", WHSEC_A)
    monkeypatch.delenv("B_SECRET", raising=False)
    with Receiver(failures=1) as receiver:
        _with_webhooks(project, receiver.url)
        [a] = _run(capsys, project, EMAIL)
        [b] = _run(capsys, project, EMAIL, workflow="email-triage-b")
        code, _, err = review(capsys, project, "approve", a)  # its first attempt fails (500)
        assert code == 0 and "was not delivered" in err
        code, _, err = review(capsys, project, "approve", b)
        assert (
            code == 0 and err == f"note: the webhook of run {b} was not sent: B_SECRET is not set\n"
        )
        from smallops.project import Project

        engine = Project(project).engine()
        with engine.begin() as connection:  # due now: retried without the backoff wait
            connection.exec_driver_sql("UPDATE webhook_deliveries SET next_attempt_at = created_at")
        code, out, err = review(capsys, project, "deliver")
        assert (code, out) == (2, "1 delivered, 0 to retry later\n")
        assert err.strip() == (
            "error: webhooks not sent: 1 of email-triage-b (B_SECRET is not set); "
            "set it to whsec_ and the base64 of at least 24 random bytes"
        )
        monkeypatch.setenv("B_SECRET", WHSEC_B)
        assert review(capsys, project, "deliver")[:2] == (0, "1 delivered, 0 to retry later\n")
    secret_of = {"email-triage": WHSEC_A, "email-triage-b": WHSEC_B}
    sent = [(json.loads(body)["data"], body, headers) for body, headers in receiver.accepted]
    assert [data["run_id"] for data, _, _ in sent] == [a, b]
    for data, body, headers in sent:
        assert Webhook(secret_of[data["workflow"]]).verify(body, headers)["data"] == data
        other = WHSEC_B if data["workflow"] == "email-triage" else WHSEC_A
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(body, headers)


def test_review_deliver_says_when_webhooks_wait_for_a_workflow_no_longer_defined(
    project, capsys, database_url, monkeypatch
):
    """Nobody knows its secret any more: they are not sent, and the command says so."""
    from webhook_receiver import Receiver

    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    monkeypatch.setenv("A_SECRET", WHSEC_A)
    monkeypatch.delenv("B_SECRET", raising=False)
    with Receiver() as receiver:
        _with_webhooks(project, receiver.url)
        [b] = _run(capsys, project, EMAIL, workflow="email-triage-b")
        assert "B_SECRET is not set" in review(capsys, project, "approve", b)[2]
        module = project / "workflows" / "email_triage.py"
        module.write_text(module.read_text().split("\nemail_triage_b =")[0])
        code, out, err = review(capsys, project, "deliver")
        assert (code, out) == (0, "0 delivered, 0 to retry later\n")
        assert err == (
            "note: 1 webhooks wait for workflows this project does not define "
            "(email-triage-b); they are not sent\n"
        )
        assert receiver.requests == []


def _read_until(process: subprocess.Popen[bytes], wanted: bytes, timeout: float) -> bytes:
    """What the process has printed on stdout once `wanted` is among it (a prompt ends with no
    line break, so lines would never come)."""
    assert process.stdout is not None
    seen, deadline = b"", time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, seen
        poller = select.poll()  # not select(): the test process may hold descriptors past 1024
        poller.register(process.stdout, select.POLLIN)
        if poller.poll(left * 1000):
            chunk = os.read(process.stdout.fileno(), 4096)
            assert chunk, seen  # the process ended before it asked
            seen += chunk
    return seen


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_review_next_stopped_by_sigterm_or_sighup_gives_its_item_back(
    project, emulator, capsys, database_url, monkeypatch, signum
):
    """Closing the terminal (SIGHUP) or stopping the process (SIGTERM) while an item is on
    screen gives it back at once, as Ctrl-C does (not after the 10-minute lease), and exits
    with 128 + the signal, on SQLite and Postgres."""
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    emulator.script(ok(GOOD))
    [run_id] = _run(capsys, project, EMAIL)
    env = {**os.environ, "SMALLOPS_REVIEWER": "dee", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from smallops.cli import main; main()", "-p", str(project),
         "review", "next"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert run_id.encode() in _read_until(process, b"[q]uit", 60)
        _, out, _ = review(capsys, project, "list", "--json")
        assert json.loads(out)["claimed_by"] == "dee"
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, err
    assert b"Traceback" not in err and f"stopped by {signal.Signals(signum).name}".encode() in err
    _, out, _ = review(capsys, project, "list", "--json")
    item = json.loads(out)
    assert item["state"] == "pending" and item["claimed_by"] is None
