"""Content modes (full, redacted, metadata) and retention (`smallops prune`)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from smallops import ConfigError
from smallops.content import mask_personal_data
from smallops.review.export import Exported, export_reviewed
from smallops.review.queue import ReviewQueue
from smallops.storage.db import get_engine, normalise_url
from smallops.storage.schema import review_decisions, review_items, runs
from smallops.testing import recorded_runs

from conftest import smallops
from emulators import ok, status

PERSONAL = {
    "subject": "Refund for card 4111 1111 1111 1111",
    "body": "Write to jane.doe@example.com or call +44 20 7946 0958. "
    "IBAN DE89 3704 0044 0532 0130 00",
}
ANSWER = {"category": "billing", "urgency": "high", "summary": "Refund to jane.doe@example.com"}
SECRETS = ("jane.doe@example.com", "4111 1111 1111 1111", "7946 0958", "DE89 3704")


def test_personal_data_is_masked_and_ordinary_numbers_are_not():
    masked = mask_personal_data(
        "jane@example.co.uk, (415) 555-0123, +14155550123, 4111-1111-1111-1111, "
        "GB82WEST12345698765432"
    )
    assert masked == "[email], [phone], [phone], [card], [iban]"
    ordinary = (
        "Meeting 2026-11-27 12:30:00, invoice 20261127, order 12345678, $1,234.56, v1.2.3, "
        "10.0.0.1, 1234 5678 9012 3456 (fails Luhn), "
        '{"created":1764247000,"usage":{"prompt_tokens":12}}'
    )
    assert mask_personal_data(ordinary) == ordinary


def _engine(wf):
    return get_engine(normalise_url(wf.settings.database_url, wf.settings.root))


def test_full_mode_keeps_everything(make_workflow, emulator):
    emulator.script(ok(ANSWER))
    wf = make_workflow()
    wf.run(**PERSONAL)
    [run] = recorded_runs(wf)
    assert run["content"] == "full"
    assert "jane.doe@example.com" in json.dumps(run["inputs"])
    assert "jane.doe@example.com" in json.dumps(run["attempts"][0]["request"])


def test_redacted_mode_masks_personal_data_everywhere_it_is_kept(make_workflow, emulator):
    emulator.script(ok(ANSWER))
    wf = make_workflow(content="redacted")
    result = wf.run(**PERSONAL)
    assert result.output.summary == ANSWER["summary"]  # the application gets the real output
    [run] = recorded_runs(wf)
    stored = json.dumps([run["inputs"], run["messages"], run["output"], run["attempts"]])
    for secret in SECRETS:
        assert secret not in stored
    assert run["content"] == "redacted"
    assert run["inputs"]["body"].startswith("Write to [email] or call [phone]. IBAN [iban]")
    assert run["output"]["summary"] == "Refund to [email]"
    assert run["input_tokens"] == 25 and run["attempts"][0]["status_code"] == 200
    item = ReviewQueue(_engine(wf)).item(result.run_id)
    assert item["output"]["summary"] == "Refund to [email]"


def test_metadata_mode_keeps_how_the_call_went_and_nothing_that_was_said(make_workflow, emulator):
    emulator.script(status(500), ok(ANSWER))
    wf = make_workflow(content="metadata", review="none", fallback="raise")
    result = wf.run(**PERSONAL)
    assert result.status == "auto" and result.output.category == "billing"
    [run] = recorded_runs(wf)
    assert run["content"] == "metadata"
    assert run["inputs"] == {} and run["messages"] is None
    assert run["output"] == {"category": "billing", "urgency": "high"}  # labels, no free text
    first, second = run["attempts"]
    assert first["status_code"] == 500 and first["error_type"] == "server_error"
    assert second["status_code"] == 200 and second["usage"]["input_tokens"] == 25
    assert "request" not in first and "response" not in second
    assert run["input_tokens"] == 25 and run["model_served"] == "gpt-4o-mini-2024-07-18"
    for secret in SECRETS:
        assert secret not in json.dumps(run, default=str)


def test_metadata_mode_with_a_human_in_the_loop_is_refused(make_workflow):
    with pytest.raises(ConfigError, match="nothing to look at"):
        make_workflow(content="metadata")  # review="all" by default
    with pytest.raises(ConfigError, match="nothing to look at"):
        make_workflow(content="metadata", review="none", fallback="review")
    with pytest.raises(ConfigError, match="not a content mode"):
        make_workflow(content="partial")
    with pytest.raises(ConfigError, match="retention_days"):
        make_workflow(retention_days=0)


def _age(wf, days: float) -> None:
    """Move every run of `wf` (and its review items) `days` into the past."""
    engine = _engine(wf)
    when = datetime.now(timezone.utc) - timedelta(days=days)
    with engine.begin() as connection:
        connection.execute(update(runs).where(runs.c.workflow == wf.name).values(started_at=when))


@pytest.fixture
def logged(make_workflow, emulator, settings, database_url):
    """A workflow on SQLite or Postgres with three old runs (one approved, one corrected, one
    still waiting for a reviewer) and one recent run."""
    wf = make_workflow(settings=dataclasses.replace(settings, database_url=database_url))
    emulator.script(ok(ANSWER), ok(ANSWER), ok(ANSWER))
    old = [wf.run(**PERSONAL).run_id for _ in range(3)]
    recorded_runs(wf)
    queue = ReviewQueue(_engine(wf))
    queue.decide(old[0], "ann", "approve")
    corrected = {**ANSWER, "summary": "Refund asked by jane.doe@example.com"}
    queue.decide(old[1], "ann", "correct", output=corrected)
    _age(wf, 40)
    emulator.script(ok(ANSWER))
    recent = wf.run(**PERSONAL).run_id
    recorded_runs(wf)
    return wf, old, recent


def test_prune_empties_old_runs_and_keeps_their_metadata(logged, capsys):
    wf, old, recent = logged
    project = wf.settings.root
    (project / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "{wf.settings.database_url}"\n'
    )
    code, out, err = smallops(
        capsys, "--project", str(project), "prune", "--older-than", "30d", "--dry-run"
    )
    assert code == 0, err
    assert "would prune 2 runs" in out and "kept 1 still waiting for a reviewer" in out
    assert all(run["content"] == "full" for run in recorded_runs(wf))

    code, out, err = smallops(
        capsys, "--project", str(project), "prune", "triage", "--older-than", "30d", "--json"
    )
    assert code == 0, err
    assert json.loads(out) | {"before": None} == {
        "workflow": "triage",
        "before": None,
        "runs": 2,
        "kept_for_review": 1,
        "dry_run": False,
    }
    by_id = {run["id"]: run for run in recorded_runs(wf)}
    for run_id in old[:2]:
        run = by_id[run_id]
        assert run["content"] == "pruned" and run["inputs"] == {}
        assert run["output"] == {"category": "billing", "urgency": "high"}  # drift still sees it
        assert run["messages"] is None and "request" not in run["attempts"][0]
        assert run["input_tokens"] == 25 and run["cost_usd"] is not None
    assert by_id[old[2]]["content"] == "full"  # a reviewer still needs it
    assert by_id[recent]["content"] == "full"  # not old enough
    engine = _engine(wf)
    with engine.connect() as connection:
        decided = connection.execute(
            select(review_items).where(review_items.c.run_id.in_(old[:2]))
        ).all()
        decisions = connection.execute(
            select(review_decisions).where(review_decisions.c.run_id.in_(old[:2]))
        ).all()
    assert {d.action for d in decisions} == {"approve", "correct"}  # the trail of who did what
    assert all(d.output_before is None and d.output_after is None for d in decisions)
    assert all(i.output is None and i.final_output is None and i.classes for i in decided)
    everything = json.dumps([by_id[i] for i in old[:2]], default=str) + str(decided + decisions)
    assert "jane.doe@example.com" not in everything

    code, out, _ = smallops(capsys, "--project", str(project), "show", old[0])
    assert code == 0 and "pruned (content removed by `smallops prune`)" in out
    code, out, _ = smallops(capsys, "--project", str(project), "prune", "--older-than", "30d")
    assert code == 0 and "pruned 0 runs" in out  # a second prune has nothing left to do
    evals = project / "evals.jsonl"
    assert export_reviewed(ReviewQueue(engine), wf, evals) == Exported(0, 2)
    assert not evals.exists()  # pruned decisions have no input to replay


def test_prune_applies_each_workflows_retention_and_says_what_to_do_without_one(project, capsys):
    _, out, _ = smallops(capsys, "--project", str(project), "list", "--json")
    assert json.loads(out)["content"] == "full" and json.loads(out)["retention_days"] == 365
    code, out, err = smallops(capsys, "--project", str(project), "prune", "--json")
    assert code == 0, err
    row = json.loads(out)
    before = datetime.fromisoformat(row["before"])
    assert row["workflow"] == "email-triage" and row["runs"] == 0
    assert abs((datetime.now(timezone.utc) - before) - timedelta(days=365)) < timedelta(minutes=1)

    source = project / "workflows" / "email_triage.py"
    source.write_text(
        "\n".join(line for line in source.read_text().splitlines() if "retention_days" not in line)
    )
    code, _, err = smallops(capsys, "--project", str(project), "prune")
    assert code == 2
    assert "nothing to prune: no workflow sets retention_days" in err
    assert "--older-than" in err
    code, _, err = smallops(capsys, "--project", str(project), "prune", "email-triage")
    assert code == 2 and "workflow 'email-triage' sets no retention_days" in err
    code, _, err = smallops(capsys, "--project", str(project), "prune", "--older-than", "soon")
    assert code == 2 and "--older-than 'soon' is not a duration or a date" in err


def test_runs_spooled_before_the_content_column_existed_replay_with_it_empty(
    make_workflow, emulator, monkeypatch
):
    """A spool written by an older version (one column fewer) is replayed, not rejected."""
    from pydantic_core import from_json, to_json

    from smallops.storage import writer as writer_module
    from smallops.storage.schema import RUN_COLUMNS
    from smallops.storage.store import RowStore

    emulator.script(ok(ANSWER), ok(ANSWER))
    wf = make_workflow(review="none")
    wf.run(**PERSONAL)
    recorded_runs(wf)

    def database_down(self, *args):
        raise OSError("connection refused")

    monkeypatch.setattr(RowStore, "write", database_down)
    spooled = wf.run(**PERSONAL).run_id
    writer_module.reset()  # the process ends while the database is down
    monkeypatch.undo()
    [spool] = list((wf.settings.root / ".smallops" / "spool").rglob("*.jsonl"))
    lines = []  # the spool as the version before content modes wrote it: one row a line
    for frame in spool.read_bytes().splitlines():
        batch = from_json(frame.split(b" ", 2)[2])
        for kind, rows in (("p", batch["p"]), ("r", batch["r"]), ("q", batch["q"])):
            for row in rows:
                if kind == "r":
                    assert len(row) == len(RUN_COLUMNS)
                    row = row[: RUN_COLUMNS.index("content")]
                lines.append(to_json([kind, row]))
    spool.write_bytes(b"\n".join(lines) + b"\n")
    assert writer_module.replay_spool(wf.settings.log) == 1
    replayed = {run["id"]: run for run in recorded_runs(wf)}[spooled]
    assert replayed["content"] is None and replayed["inputs"]["subject"] == PERSONAL["subject"]


def test_prune_goes_through_many_runs_in_small_batches(tmp_path, database_url, monkeypatch):
    from smallops import FakeProvider, Settings, Workflow
    from smallops.storage import prune as retention

    from models import Triage

    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    wf = Workflow(
        "many",
        model="fake:rules",
        prompt="p.prompt",
        output=Triage,
        fallback="raise",
        review="none",
        provider=FakeProvider(lambda _: ANSWER),
        settings=Settings(root=tmp_path, database_url=database_url),
        base_dir=tmp_path,
    )
    for i in range(11):
        wf.run(text=f"mail {i} from jane.doe@example.com")
    recorded_runs(wf)
    monkeypatch.setattr(retention, "BATCH", 3)
    advanced = []
    pruned = retention.prune(_engine(wf), "many", datetime.now(timezone.utc), advanced.append)
    assert pruned == 11 and advanced == [3, 3, 3, 2]
    assert {run["content"] for run in recorded_runs(wf)} == {"pruned"}
    assert "jane.doe" not in json.dumps(recorded_runs(wf), default=str)
