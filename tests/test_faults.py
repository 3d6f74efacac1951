"""The fault suite: the log keeps its promise under hostile input, refusals and damaged spools.

Each test drives the real CLI (or library) against the provider emulator and a real log
database, SQLite and Postgres, and counts: every call is in the database, or in the quarantine
with a reason, or counted as lost with a non-zero exit; never silently missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from smallops.config import Settings
from smallops.storage import writer as writer_module
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.quarantine import Quarantine
from smallops.storage.spool import Spool, frame
from smallops.storage.store import RowBatch, RowStore, land

from conftest import mount_tmpfs, smallops
from emulators import ok, respond
from faultkit import database_down, refuse_poison
from models import GOOD

# Inputs and model outputs a stranger's email can carry. Raw JSON Lines text: NaN and Infinity
# are what Python's json module writes (and reads) for non-finite numbers.
ODD_INPUTS = {
    "nul": '{"sender": "a@x.example", "subject": "nul", "body": "before \\u0000 after"}',
    "nan": '{"sender": "a@x.example", "subject": "nan", "body": NaN}',
    "inf": '{"sender": "a@x.example", "subject": "inf", "body": Infinity}',
    "-inf": '{"sender": "a@x.example", "subject": "-inf", "body": -Infinity}',
    "lone": '{"sender": "a@x.example", "subject": "lone", "body": "lone \\ud800 surrogate"}',
    "ls": '{"sender": "a@x.example", "subject": "ls", "body": "one\u2028two\u2029three"}',
    "nul-out": '{"sender": "a@x.example", "subject": "nul-out", "body": "#nul-out"}',
    "nan-out": '{"sender": "a@x.example", "subject": "nan-out", "body": "#nan-out"}',
    "lone-out": '{"sender": "a@x.example", "subject": "lone-out", "body": "#lone-out"}',
    "ls-out": '{"sender": "a@x.example", "subject": "ls-out", "body": "#ls-out"}',
}
ODD_OUTPUTS = {
    "#nul-out": '{"category": "billing", "urgency": "normal", "summary": "a\\u0000b"}',
    "#nan-out": '{"category": "billing", "urgency": NaN, "summary": "x"}',
    "#lone-out": '{"category": "billing", "urgency": "normal", "summary": "lone \\udc00 here"}',
    "#ls-out": '{"category": "billing", "urgency": "normal", "summary": "one\\u2028two"}',
}
EXPECTED_FLAGS = {
    "nul": ["nul_replaced"],
    "nan": ["non_finite_as_text"],
    "inf": ["non_finite_as_text"],
    "-inf": ["non_finite_as_text"],
    "lone": ["surrogate_replaced"],
    "ls": None,
    "nul-out": ["nul_replaced"],
    "nan-out": ["non_finite_as_text"],
    "lone-out": None,  # not valid JSON to a strict parser: invalid_json, kept as raw text
    "ls-out": None,
}


def odd_model(body: dict[str, Any], _headers: dict[str, str]) -> Any:
    """The emulator's answer: an odd output when the email asks for one, else a good one."""
    said = " ".join(str(m.get("content")) for m in body.get("messages", []))
    for marker, output in ODD_OUTPUTS.items():
        if marker in said:
            return ok(output)
    return ok(GOOD)


def use_database(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", url)


def engine_of(project: Path, url: str) -> Any:
    engine = get_engine(normalise_url(url, project))
    ensure_schema(engine)
    return engine


def write_inputs(path: Path, normal: int, odd: dict[str, str], every: int = 20) -> Path:
    """`normal` ordinary emails with the odd lines mixed in, one every `every` lines."""
    lines, odd_lines = [], list(odd.values())
    for i in range(normal):
        lines.append(json.dumps({"sender": "c@x.example", "subject": f"mail {i}", "body": "hi"}))
        if i % every == every - 1 and odd_lines:
            lines.append(odd_lines.pop(0))
    lines += odd_lines
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_json(capsys: Any, project: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    code, out, err = smallops(capsys, "-p", str(project), "run", "email-triage", *args, "--json")
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_hostile_text_in_inputs_and_outputs_is_recorded_and_every_later_command_works(
    project, emulator, database_url, monkeypatch, capsys, tmp_path
):
    """NUL, NaN, Infinity, a lone surrogate and U+2028 in 10 of 210 inputs and outputs: all
    210 runs are in the log, the changed ones flagged, and every reading command still works."""
    use_database(monkeypatch, database_url)
    emulator.default = respond(odd_model)
    inputs = write_inputs(tmp_path / "inbox.jsonl", 200, ODD_INPUTS)
    code, results, err = run_json(capsys, project, "--input", str(inputs), "-c", "8")
    assert code == 0, err
    assert len(results) == 210 and "Traceback" not in err
    by_subject = {}
    with engine_of(project, database_url).connect() as connection:
        rows = connection.execute(text("SELECT id, status, flags, inputs FROM runs")).all()
        items = connection.execute(text("SELECT count(*) FROM review_items")).scalar_one()
    assert len(rows) == 210 and items == 210
    for row in rows:
        inputs_recorded = row.inputs if isinstance(row.inputs, dict) else json.loads(row.inputs)
        flags = (
            row.flags if row.flags is None or isinstance(row.flags, list) else json.loads(row.flags)
        )
        by_subject[inputs_recorded["subject"]] = (row, flags, inputs_recorded)
    for name, expected in EXPECTED_FLAGS.items():
        _row, flags, _recorded = by_subject[name]
        assert flags == expected, (name, flags)
    assert by_subject["nul"][2]["body"] == "before \ufffd after"
    assert by_subject["nan"][2]["body"] == "NaN" and by_subject["-inf"][2]["body"] == "-Infinity"
    assert by_subject["lone"][2]["body"] == "lone \ufffd surrogate"
    assert by_subject["ls"][2]["body"] == "one\u2028two\u2029three"
    assert by_subject["nan-out"][0].status == "queued_for_human"
    assert by_subject["lone-out"][0].status == "queued_for_human"
    for name in EXPECTED_FLAGS:
        code, _, err = smallops(capsys, "-p", str(project), "show", by_subject[name][0].id)
        assert code == 0 and "Traceback" not in err, (name, err)
    for command in (
        ["logs"],
        ["logs", "--json", "-n", "500"],
        ["review", "list", "--json"],
        ["status", "--json"],
        ["report", "--json"],
        ["review", "export", "email-triage", "--to", str(tmp_path / "export.jsonl")],
    ):
        code, _, err = smallops(capsys, "-p", str(project), *command)
        assert code == 0 and "Traceback" not in err, (command, err)


def test_a_record_the_database_refuses_is_set_aside_and_never_blocks_the_rest(
    project, emulator, database_url, monkeypatch, capsys, tmp_path
):
    use_database(monkeypatch, database_url)
    engine = engine_of(project, database_url)
    refuse_poison(engine)
    poison = {
        f"p{i}": json.dumps({"sender": "a@x.example", "subject": f"poison {i}", "body": "x"})
        for i in range(3)
    }
    inputs = write_inputs(tmp_path / "inbox.jsonl", 57, poison)
    code, results, err = run_json(capsys, project, "--input", str(inputs))
    assert code == 0 and len(results) == 60
    assert "refused 3 run records" in err
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM runs")).scalar_one() == 57
        assert connection.execute(text("SELECT count(*) FROM review_items")).scalar_one() == 57
    quarantined = [e for e in _quarantine(project, database_url).entries() if e.kind == "run"]
    assert len(quarantined) == 3 and all(e.data["review"] for e in quarantined)
    code, out, _ = smallops(capsys, "-p", str(project), "status", "--json")
    assert code == 0 and json.loads(out.splitlines()[0])["set_aside"]["records"] == 3
    poisoned = next(e.run_id for e in quarantined)
    code, out, _ = smallops(capsys, "-p", str(project), "show", poisoned)
    assert code == 0 and "set aside" in out and "refused" in out
    code, out, _ = smallops(capsys, "-p", str(project), "status")
    assert "set aside" in out and "3 records" in out
    assert {e.run_id for e in quarantined} <= {r["run_id"] for r in results}


def _quarantine(project: Path, url: str) -> Quarantine:
    settings = Settings.load(project, env={"SMALLOPS_DATABASE_URL": url})
    return writer_module.quarantine_for(settings.log)


def test_a_refused_record_in_the_spool_is_set_aside_and_the_rest_replayed(
    project, emulator, database_url, monkeypatch, capsys, tmp_path
):
    """Spooled during an outage, replayed after it: the refused record no longer stops the
    replay at its line (which used to stop all logging, for good)."""
    use_database(monkeypatch, database_url)
    engine = engine_of(project, database_url)
    refuse_poison(engine)

    database_down(monkeypatch)
    poison = {"p": json.dumps({"sender": "a@x.example", "subject": "poison", "body": "x"})}
    inputs = write_inputs(tmp_path / "inbox.jsonl", 19, poison)
    code, results, err = run_json(capsys, project, "--input", str(inputs))
    assert code == 3 and "runs are kept in" in err and len(results) == 20
    monkeypatch.undo()
    use_database(monkeypatch, database_url)
    for _ in range(2):  # the second time finds nothing left to replay
        code, out, err = smallops(capsys, "-p", str(project), "logs", "--json", "-n", "100")
        assert code == 0, err
        assert len(out.splitlines()) == 19
    entries = [e for e in _quarantine(project, database_url).entries() if e.kind == "run"]
    assert len(entries) == 1 and "poison" in json.dumps(entries[0].data["run"])


def _store(project: Path, url: str) -> RowStore:
    return RowStore(engine_of(project, url), timeout=5)


def _spool_frames(project: Path, capsys: Any, monkeypatch: Any, tmp_path: Path) -> list[bytes]:
    """Real spool frames: three runs of the CLI while the database is down, taken out of the
    spool so the test can damage them."""
    with monkeypatch.context() as patch:
        database_down(patch)
        for i in range(3):
            inputs = write_inputs(tmp_path / f"in{i}.jsonl", 2, {})
            assert run_json(capsys, project, "--input", str(inputs))[0] == 3
    spooled = sorted((project / ".smallops" / "spool").rglob("*.jsonl"))
    frames = [line for path in spooled for line in path.read_bytes().splitlines(keepends=True)]
    for path in spooled:
        path.unlink()
    return frames


def test_a_torn_or_damaged_spool_frame_is_set_aside_and_the_whole_ones_replay(
    project, emulator, database_url, monkeypatch, capsys, tmp_path
):
    use_database(monkeypatch, database_url)
    frames = _spool_frames(project, capsys, monkeypatch, tmp_path)
    assert len(frames) == 3
    folder = project / ".smallops" / "spool" / "test"
    folder.mkdir(parents=True)
    damaged = bytearray(frames[0])
    damaged[len(damaged) // 2] ^= 0x01  # one bit flipped inside the payload
    torn = frames[-1][: len(frames[-1]) // 2]
    (folder / "1.jsonl").write_bytes(bytes(damaged) + b"".join(frames[1:]) + torn)
    quarantine = Quarantine(project / "aside")
    store = _store(project, database_url)
    landed = Spool(folder).replay(lambda b: land(store, b, quarantine.add), quarantine.add_bytes)
    store.close()
    whole = sum(len(json.loads(f.split(b" ", 2)[2])["r"]) for f in frames[1:])
    assert landed == whole and not list(folder.glob("*.jsonl"))
    reasons = sorted(e.reason for e in quarantine.entries())
    assert len(reasons) == 2
    assert "checksum" in reasons[0] and "torn" in reasons[1]


def test_a_spool_write_that_fails_half_way_is_taken_back(tmp_path):
    """A full disk mid-frame: the half frame is cut off, so the file stays whole and the
    frames written before it replay, none twice, none torn."""
    folder = tmp_path / "spool"
    folder.mkdir()
    with mount_tmpfs(folder, "16k"):
        spool = Spool(folder / "db")
        kept = failed = 0
        for i in range(40):
            run = [f"id-{i:04d}", "x" * 900]
            try:
                spool.append(RowBatch(runs=[run]))
                kept += 1
            except OSError:
                failed += 1
        spool.close()
        data = b"".join(p.read_bytes() for p in (folder / "db").glob("*.jsonl"))
    assert failed and kept
    lines = data.splitlines(keepends=True)
    assert len(lines) == kept and all(line.endswith(b"\n") for line in lines)
    assert data == b"".join(frame(RowBatch(runs=[[f"id-{i:04d}", "x" * 900]])) for i in range(kept))


def test_hostile_text_from_reviewers_and_in_eval_outputs_is_stored_on_both_engines(
    project, emulator, database_url, monkeypatch, capsys, tmp_path
):
    """Writes outside the log writer (a reviewer's correction and reason, an eval's outputs)
    make text storable the same way: NUL becomes U+FFFD instead of a database error."""
    use_database(monkeypatch, database_url)
    emulator.default = ok({**GOOD, "summary": "nul \u0000 in an eval output"})
    inputs = write_inputs(tmp_path / "inbox.jsonl", 2, {})
    code, results, err = run_json(capsys, project, "--input", str(inputs))
    assert code == 0, err
    first, second = (r["run_id"] for r in results)
    correction = json.dumps({**GOOD, "summary": "fixed \u0000 by hand"})
    code, _, err = smallops(
        capsys, "-p", str(project), "review", "correct", first, "--output", correction
    )
    assert code == 0, err
    code, _, err = smallops(
        capsys, "-p", str(project), "review", "reject", second, "--reason", "spam \u0000 bot"
    )
    assert code == 0, err
    code, _, err = smallops(capsys, "-p", str(project), "eval", "email-triage")
    assert "Traceback" not in err and code in (0, 1), err
    with engine_of(project, database_url).connect() as connection:
        fixed = connection.execute(
            text("SELECT final_output FROM review_items WHERE run_id = :id"), {"id": first}
        ).scalar_one()
        reason = connection.execute(
            text("SELECT reject_reason FROM review_items WHERE run_id = :id"), {"id": second}
        ).scalar_one()
        outputs = connection.execute(text("SELECT output FROM eval_results")).scalars().all()
    fixed = fixed if isinstance(fixed, dict) else json.loads(fixed)
    assert fixed["summary"] == "fixed \ufffd by hand" and reason == "spam \ufffd bot"
    assert len(outputs) == 30
    parsed = [json.loads(o) if isinstance(o, str) else o for o in outputs]
    assert all(o["summary"] == "nul \ufffd in an eval output" for o in parsed)


def test_an_unexpected_error_in_the_writer_counts_its_records_as_lost_never_silently(
    project, emulator, database_url, monkeypatch, capsys, tmp_path
):
    """Whatever breaks inside the writer, every record is written, spooled, set aside or
    counted as lost, and the command says so with a non-zero exit."""
    use_database(monkeypatch, database_url)
    database_down(monkeypatch)

    def broken(self: Any, batch: Any) -> None:
        raise RuntimeError("a bug in the spool")

    monkeypatch.setattr(Spool, "append", broken)
    inputs = write_inputs(tmp_path / "inbox.jsonl", 3, {})
    code, results, err = run_json(capsys, project, "--input", str(inputs))
    assert code == 1 and len(results) == 3
    assert "3 run records could not be kept" in err
