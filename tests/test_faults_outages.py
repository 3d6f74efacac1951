"""The fault suite, outages: a database that stalls (packets held, never refused) or a spool
disk that fills up, under `smallops run` in a real process. Every record is in the database,
in the spool, or counted as lost with a non-zero exit."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest
from sqlalchemy.engine import make_url

from smallops.config import Settings
from smallops.storage.db import normalise_url
from smallops.storage.spool import Spool, spool_folder

from conftest import mount_tmpfs, smallops
from emulators import delay, ok
from faultkit import GOOD, cli, count, inputs_file, orphans, proxied


def _spool_waiting(project, url) -> int:
    settings = Settings.load(project, env={"SMALLOPS_DATABASE_URL": url})
    return Spool(spool_folder(settings.spool_dir, normalise_url(url, project))).waiting()


def _wait_for_requests(emulator, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(emulator.requests) < n:
        assert time.monotonic() < deadline, f"only {len(emulator.requests)} requests arrived"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_20_second_stall_mid_run_loses_nothing(project, emulator, postgres_url, tmp_path):
    """500 inputs; Postgres stops answering (bytes held, connections unanswered) for 20 s in
    the middle: the writer spools within its bound, warns, replays when it answers again, and
    all 500 runs are in the log when the command ends, with exit 0."""
    proxy, url = proxied(postgres_url, project)
    count(url, project, "SELECT count(*) FROM runs")  # the schema exists before the stall
    emulator.default = delay(0.2, ok(GOOD))
    inputs = inputs_file(tmp_path / "inbox.jsonl", 500)
    process = cli(
        project,
        url,
        "run",
        "email-triage",
        "-i",
        str(inputs),
        "-c",
        "4",
        SMALLOPS_WRITE_TIMEOUT="2",
    )
    _wait_for_requests(emulator, 40)
    proxy.stall()
    time.sleep(20)
    proxy.resume()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "unreachable" in err and "is back" in err
    assert count(url, project, "SELECT count(*) FROM runs") == 500
    assert orphans(url, project) == 0
    proxy.cut()


@pytest.mark.slow
def test_a_stall_that_never_ends_exits_non_zero_with_every_record_in_the_spool(
    project, emulator, postgres_url, tmp_path, capsys, monkeypatch
):
    proxy, url = proxied(postgres_url, project)
    count(url, project, "SELECT count(*) FROM runs")
    emulator.default = delay(0.02, ok(GOOD))
    inputs = inputs_file(tmp_path / "inbox.jsonl", 500)
    process = cli(
        project,
        url,
        "run",
        "email-triage",
        "-i",
        str(inputs),
        "-c",
        "4",
        SMALLOPS_WRITE_TIMEOUT="2",
    )
    _wait_for_requests(emulator, 100)
    proxy.stall()
    started = time.monotonic()
    _, err = process.communicate(timeout=120)
    waited = time.monotonic() - started
    assert process.returncode == 3, err[-2000:]
    assert "runs are kept in" in err and "could not be kept" not in err
    proxy.cut()  # the stalled connections go; the database itself is fine
    proxy.restore()
    in_database = count(url, project, "SELECT count(*) FROM runs")
    # Every record is in the database or the spool. A batch whose COMMIT reached Postgres just
    # before the stall, with the answer held, is in both: the writer could not know it landed,
    # so it kept it; the replay skips what is already there (checked below: exactly 500).
    assert in_database + _spool_waiting(project, url) >= 500 and in_database < 500
    assert waited < 30, f"the command took {waited:.0f} s to give up on a stalled database"
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", url)
    code, _, err = smallops(capsys, "-p", str(project), "logs", "-n", "1")  # replays the spool
    assert code == 0, err
    assert count(url, project, "SELECT count(*) FROM runs") == 500
    assert orphans(url, project) == 0
    proxy.cut()


def _lost(err: str) -> int:
    found = re.search(r"(\d+) run records could not be kept", err)
    return int(found.group(1)) if found else 0


def test_a_spool_disk_that_fills_up_counts_what_it_lost_and_exits_non_zero(
    project, emulator, database_url, tmp_path, capsys, monkeypatch
):
    """The database is down and the spool is on a 64 KiB filesystem: what fits is kept whole
    (each run with its review item), the rest is counted as lost, and the exit code says so."""
    if database_url.startswith("sqlite"):
        url, outage = database_url, _SqliteLock(database_url)
    else:
        proxy, url = proxied(database_url, project)
        outage = _ProxyCut(proxy)
    count(url, project, "SELECT count(*) FROM runs")
    spool = project / ".smallops" / "spool"
    spool.mkdir(parents=True)
    inputs = inputs_file(tmp_path / "inbox.jsonl", 300)
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", url)
    monkeypatch.setenv("SMALLOPS_WRITE_TIMEOUT", "1")
    with mount_tmpfs(spool, "64k"):
        with outage:
            code, _, err = smallops(
                capsys, "-p", str(project), "run", "email-triage", "-i", str(inputs), "--json"
            )
        lost = _lost(err)
        assert code == 1 and lost > 0, err[-2000:]
        code, _, err2 = smallops(capsys, "-p", str(project), "logs", "-n", "1")  # replays
        assert code == 0, err2
    recorded = count(url, project, "SELECT count(*) FROM runs")
    assert recorded + lost == 300 and recorded > 0
    assert orphans(url, project) == 0


class _SqliteLock:
    """Another connection holds SQLite's write lock: every write waits, then gives up."""

    def __init__(self, url: str) -> None:
        self.path = make_url(url).database

    def __enter__(self) -> None:
        self.connection = sqlite3.connect(self.path, isolation_level=None)
        self.connection.execute("BEGIN EXCLUSIVE")

    def __exit__(self, *exc: object) -> None:
        self.connection.rollback()
        self.connection.close()


class _ProxyCut:
    def __init__(self, proxy) -> None:
        self.proxy = proxy

    def __enter__(self) -> None:
        self.proxy.cut()

    def __exit__(self, *exc: object) -> None:
        self.proxy.restore()
