"""The fault suite, interruptions: SIGTERM and SIGINT at random points of `smallops run`, with
and without a database outage, and `--resume` after a kill -9."""

from __future__ import annotations

import json
import random
import re
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from smallops.batches import file_key

from conftest import smallops
from emulators import delay, ok
from faultkit import GOOD, cli, engine_of, inputs_file, orphans, proxied

SUMMARY = re.compile(
    r"interrupted by (SIG\w+): (\d+) finished \(([^)]*)\); (\d+) cancelled in flight; "
    r"(\d+) not started"
)


def _wait_for_requests(emulator, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(emulator.requests) < n:
        assert time.monotonic() < deadline, f"only {len(emulator.requests)} requests arrived"
        time.sleep(0.005)


def _batch_runs(url: str, root: Path, inputs: Path) -> list:
    prefix = file_key("email-triage", inputs) + "/%"
    with engine_of(url, root).connect() as connection:
        return connection.execute(
            text(
                "SELECT id, status, error_type, batch_id, batch_item FROM runs "
                "WHERE batch_id LIKE :prefix"
            ),
            {"prefix": prefix},
        ).all()


def _check_interrupted(project, url, inputs, signum, out, err, capsys, monkeypatch) -> dict:
    """The summary printed, the results printed and the log agree on every call."""
    found = SUMMARY.search(err)
    assert found, err[-2000:]
    name, finished, breakdown, cancelled, not_started = found.groups()
    assert name == signal.Signals(signum).name
    finished, cancelled, not_started = int(finished), int(cancelled), int(not_started)
    assert finished + cancelled + not_started == 300
    by_status = {}
    if breakdown != "none":
        for part in breakdown.split(", "):
            n, status = part.split(" ")
            by_status[status] = int(n)
    printed = [json.loads(line) for line in out.split("\n") if line.strip()]
    assert len(printed) == finished
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", url)
    assert smallops(capsys, "-p", str(project), "logs", "-n", "1")[0] == 0  # replays any spool
    rows = _batch_runs(url, project, inputs)
    done = [r for r in rows if r.error_type != "cancelled"]
    assert len(done) == finished and len(rows) - len(done) == cancelled
    recorded = {r.id: r.status for r in done}
    assert {r["run_id"]: r["status"] for r in printed} == recorded
    counted: dict[str, int] = {}
    for status in recorded.values():
        counted[status] = counted.get(status, 0) + 1
    assert counted == by_status
    assert orphans(url, project) == 0
    return {"finished": finished, "cancelled": cancelled, "not_started": not_started}


def _interrupt(project, url, inputs, emulator, signum, at: int, **env: str):
    emulator.clear()
    process = cli(
        project, url, "run", "email-triage", "-i", str(inputs), "--json", "-c", "4", **env
    )
    _wait_for_requests(emulator, at)
    process.send_signal(signum)
    out, err = process.communicate(timeout=90)
    assert process.returncode == 128 + signum, err[-2000:]
    return out, err


@pytest.mark.slow
def test_signals_at_random_points_keep_every_finished_call_with_its_status(
    project, emulator, postgres_url, tmp_path, capsys, monkeypatch
):
    """10 runs of 300 inputs on Postgres, SIGTERM or SIGINT at a random call, every other run
    with the database cut off first: the printed summary matches the log, call for call."""
    emulator.default = delay(0.01, ok(GOOD))
    proxy, url = proxied(postgres_url, project)
    engine_of(url, project)
    chance = random.Random(8)
    for attempt in range(10):
        signum = (signal.SIGTERM, signal.SIGINT)[attempt % 2]
        outage = attempt % 4 >= 2
        inputs = inputs_file(tmp_path / f"inbox{attempt}.jsonl", 300, prefix=f"a{attempt}")
        if outage:
            proxy.cut()
        out, err = _interrupt(
            project,
            url,
            inputs,
            emulator,
            signum,
            chance.randint(5, 250),
            SMALLOPS_WRITE_TIMEOUT="2",
        )
        if outage:
            assert "runs are kept in" in err
            proxy.restore()
        _check_interrupted(project, url, inputs, signum, out, err, capsys, monkeypatch)
    proxy.cut()


def test_signals_on_sqlite_keep_every_finished_call_with_its_status(
    project, emulator, tmp_path, capsys, monkeypatch
):
    emulator.default = delay(0.01, ok(GOOD))
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine_of(url, project)
    chance = random.Random(3)
    for attempt, signum in enumerate((signal.SIGTERM, signal.SIGINT)):
        inputs = inputs_file(tmp_path / f"inbox{attempt}.jsonl", 300, prefix=f"s{attempt}")
        out, err = _interrupt(project, url, inputs, emulator, signum, chance.randint(5, 250))
        _check_interrupted(project, url, inputs, signum, out, err, capsys, monkeypatch)


def test_resume_after_kill_9_runs_each_input_exactly_once(
    project, emulator, database_url, tmp_path, capsys, monkeypatch
):
    """kill -9 half-way through 500 inputs, then --resume: each input has exactly one
    recorded run of that batch."""
    emulator.default = delay(0.01, ok(GOOD))
    engine_of(database_url, project)
    inputs = inputs_file(tmp_path / "inbox.jsonl", 500)
    process = cli(project, database_url, "run", "email-triage", "-i", str(inputs), "-c", "4")
    _wait_for_requests(emulator, 250)
    process.kill()
    process.wait(timeout=30)
    before = _batch_runs(database_url, project, inputs)
    assert 0 < len(before) < 500
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "-i", str(inputs), "--resume"
    )
    assert code == 0, err
    assert f"{len(before)} inputs already recorded, {500 - len(before)} to run" in err
    rows = _batch_runs(database_url, project, inputs)
    assert len({r.batch_id for r in rows}) == 1
    marks = [r.batch_item for r in rows if r.error_type != "cancelled"]
    assert len(marks) == 500 and len(set(marks)) == 500
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "-i", str(inputs), "--resume"
    )
    assert code == 0 and "500 inputs already recorded, 0 to run" in err
    assert len(_batch_runs(database_url, project, inputs)) == len(rows)


def test_resume_needs_an_input_file_and_an_earlier_batch(project, capsys, tmp_path):
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", "{}", "--resume"
    )
    assert code == 2 and "--resume needs --input FILE" in err
    inputs = inputs_file(tmp_path / "new.jsonl", 3)
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "-i", str(inputs), "--resume"
    )
    assert code == 2 and "no earlier batch" in err and len(err.strip().splitlines()) == 1
