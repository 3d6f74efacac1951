"""The guards when their own stores fail: Redis refused or stalled, the log database down.

Redis and Postgres sit behind tests/tcpproxy.py, which can refuse connections (`cut`) or hold
every byte (`stall`). A rate limit and a breaker carry on in this process's memory; a budget
fails closed (`budget_unavailable`); the batch goes on and every input is accounted for.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from smallops import BreakerConfig, Budget, FakeProvider, Settings, Workflow
from smallops.config import Price
from smallops.resilience.budget import BUDGET_WAIT
from smallops.resilience.shared import REDIS_TIMEOUT, RETRY_AFTER, SharedStore
from smallops.storage.db import get_engine, normalise_url
from smallops.storage.queries import plain_row
from smallops.storage.schema import budget_spend, runs
from smallops.testing import recorded_runs
from test_guards import needs_redis

from conftest import smallops
from emulators import ModelServer
from models import GOOD, Triage
from tcpproxy import TcpProxy

INPUTS = 300
WORKFLOW = textwrap.dedent("""
    from smallops import Workflow

    triage = Workflow("triage", model="openai:gpt-4o-mini-2024-07-18", prompt="triage.prompt",
                      review="none", fallback="review", rate_limit="100000/minute", timeout=5)
""")


@pytest.fixture
def redis_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(("127.0.0.1", 6379))
    yield proxy
    proxy.resume()  # let calls held by a stall finish
    proxy.close()


@pytest.fixture
def batch_project(
    tmp_path: Path, database_url: str, emulator: ModelServer, redis_proxy: TcpProxy, monkeypatch
) -> Path:
    """A project whose limits and breakers live in Redis behind the proxy, and 300 inputs."""
    (tmp_path / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "{database_url}"\n'
        f'[providers.openai]\nbase_url = "{emulator.openai_base_url}"\n'
    )
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "triage.prompt").write_text("[user]\n{{ text }}")
    (tmp_path / "workflows" / "triage.py").write_text(WORKFLOW)
    lines = (json.dumps({"text": f"message {i}"}) for i in range(INPUTS))
    (tmp_path / "inputs.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("SMALLOPS_REDIS_URL", f"redis://127.0.0.1:{redis_proxy.port}/0")
    return tmp_path


def when_requests_reach(emulator: ModelServer, count: int, then: Callable[[], None]) -> list[float]:
    """Call `then` once the emulator has received `count` requests (the middle of a batch);
    the list gets the moments just before and just after."""
    moments: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + 30
        while len(emulator.requests) < count and time.monotonic() < deadline:
            time.sleep(0.001)
        moments.append(time.time())
        then()
        moments.append(time.time())

    threading.Thread(target=watch, daemon=True).start()
    return moments


def run_batch(capsys, project: Path) -> list[dict[str, Any]]:
    code, out, err = smallops(
        capsys, "-p", str(project), "run", "triage", "-i", str(project / "inputs.jsonl"),
        "-c", "20", "--json",
    )  # fmt: skip
    assert code == 0 and "Traceback" not in err, err
    return [json.loads(line) for line in out.splitlines()]


def assert_all_accounted_for(project: Path, printed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every input printed and recorded with a real status; the recorded runs, oldest first."""
    assert [p["line"] for p in printed] == list(range(1, INPUTS + 1))
    assert Counter(p["status"] for p in printed) == {"auto": INPUTS}
    engine = get_engine(normalise_url(_database(project), project))
    with engine.connect() as connection:
        rows = connection.execute(
            select(runs.c.id, runs.c.status, runs.c.guards, runs.c.started_at, runs.c.latency_ms)
        ).all()
    assert {row.id for row in rows} == {p["run_id"] for p in printed}
    assert Counter(row.status for row in rows) == {"auto": INPUTS}
    return [plain_row(row._mapping) for row in rows]


def _database(project: Path) -> str:
    text = (project / "smallops.toml").read_text()
    return text.split('database_url = "')[1].split('"')[0]


def degraded_guards(row: dict[str, Any]) -> set[str]:
    return {d["guard"] for d in row["guards"] or [] if d["decision"] == "degraded"}


def assert_runs_show_the_outage(rows: list[dict[str, Any]], began: float, ended: float) -> None:
    """Runs over before the outage began show nothing; each run that started after it shows
    both the rate limit and the breaker degraded (and there are plenty of those)."""
    before, after = [], []
    for row in rows:
        start = row["started_at"].timestamp()
        if start + row["latency_ms"] / 1000 < began:
            before.append(degraded_guards(row))
        elif start > ended:
            after.append(degraded_guards(row))
    assert before and all(found == set() for found in before)
    assert len(after) >= 100 and all(found == {"rate_limit", "breaker"} for found in after)


def assert_status_shows_degradation(capsys, project: Path) -> None:
    code, out, _ = smallops(capsys, "-p", str(project), "status", "--json")
    row = json.loads(out)
    assert code == 0 and row["breaker"]["state"] == "closed"
    outages = {o["guard"]: o for o in row["degraded"]}
    assert set(outages) == {"rate_limit", "breaker"}
    assert "unreachable since" in outages["rate_limit"]["reason"]
    assert outages["rate_limit"]["reason"].endswith("using this process's limit")
    assert outages["breaker"]["reason"].endswith("using this process's breaker")
    assert outages["rate_limit"]["since"] and outages["breaker"]["since"]
    # What it shows is this process's fallback, not the shared state (which nobody knows now).
    assert row["breaker"]["source"] == "fallback" and row["rate_limits_source"] == "fallback"
    code, out, _ = smallops(capsys, "-p", str(project), "status")
    assert code == 0 and "degraded  rate limit: Redis at redis://127.0.0.1:" in out
    assert "shared (Redis)" not in out
    assert "breaker   closed (this process's fallback: Redis is unreachable" in out
    assert "left in this process's fallback (the shared count is unknown)" in out


@needs_redis
def test_status_says_the_breaker_and_limit_shown_are_shared_only_while_redis_answers(
    batch_project, redis_proxy, capsys
):
    """With Redis answering, status shows the shared breaker and limit; once it is cut, the
    same command says it shows this process's fallback and that the shared state is unknown."""
    code, out, _ = smallops(capsys, "-p", str(batch_project), "status", "--json")
    row = json.loads(out)
    assert code == 0 and row["degraded"] == []
    assert row["breaker"]["source"] == "shared" and row["rate_limits_source"] == "shared"
    code, out, _ = smallops(capsys, "-p", str(batch_project), "status")
    assert "breaker   closed (shared (Redis))" in out and "fallback" not in out
    redis_proxy.cut()
    code, out, _ = smallops(capsys, "-p", str(batch_project), "status", "--json")
    row = json.loads(out)
    assert code == 0 and {o["guard"] for o in row["degraded"]} == {"rate_limit", "breaker"}
    assert row["breaker"]["source"] == "fallback" and row["rate_limits_source"] == "fallback"


def outage_warnings(caplog: pytest.LogCaptureFixture, guard: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(f"smallops: {guard}: Redis at") and "unreachable" in r.message
    ]


@needs_redis
def test_redis_refused_mid_batch_loses_no_input_and_shows_the_degradation(
    batch_project, emulator, redis_proxy, capsys, caplog
):
    """Redis refuses connections after 80 of 300 calls: the batch carries on with this
    process's limit and breaker, all 300 are recorded, and status and the runs say so."""
    caplog.set_level(logging.WARNING, logger="smallops")
    cut = when_requests_reach(emulator, 80, redis_proxy.cut)
    started = time.monotonic()
    printed = run_batch(capsys, batch_project)
    assert time.monotonic() - started < 20
    rows = assert_all_accounted_for(batch_project, printed)
    assert_runs_show_the_outage(rows, *cut)
    assert len(outage_warnings(caplog, "rate_limit")) == 1  # once per outage, not per call
    assert len(outage_warnings(caplog, "breaker")) == 1
    assert not [r for r in caplog.records if "answers again" in r.getMessage()]
    assert_status_shows_degradation(capsys, batch_project)


@needs_redis
def test_redis_stalled_mid_batch_loses_no_input_and_holds_no_call_for_long(
    batch_project, emulator, redis_proxy, capsys
):
    """Redis stops answering (bytes held, no reset) after 80 of 300 calls: a call waits at
    most a Redis timeout per store, the batch carries on, and all 300 are recorded."""
    stall = when_requests_reach(emulator, 80, redis_proxy.stall)
    started = time.monotonic()
    printed = run_batch(capsys, batch_project)
    assert time.monotonic() - started < 20
    rows = assert_all_accounted_for(batch_project, printed)
    assert max(p["latency_ms"] for p in printed) < 3 * REDIS_TIMEOUT * 1000 + 1000
    assert_runs_show_the_outage(rows, *stall)
    assert_status_shows_degradation(capsys, batch_project)


@needs_redis
def test_the_shared_store_is_used_again_once_redis_answers(
    tmp_path, database_url, redis_proxy, caplog
):
    """After an outage Redis is tried again every RETRY_AFTER seconds, and used again (one log
    line) once it answers: a run after that shows no degradation and counts in Redis."""
    caplog.set_level(logging.WARNING, logger="smallops")
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    settings = Settings(
        root=tmp_path,
        database_url=database_url,
        redis_url=f"redis://127.0.0.1:{redis_proxy.port}/0",
    )
    name = f"recovering-{time.time_ns()}"
    wf = Workflow(name, model="fake:x", prompt="p.prompt", fallback="review", review="none",
                  provider=FakeProvider(lambda _: "ok"), rate_limit="1000/minute",
                  base_dir=tmp_path, settings=settings)  # fmt: skip
    assert wf.run(text="before").status == "auto"
    redis_proxy.cut()
    assert [wf.run(text="during").status for _ in range(5)] == ["auto"] * 5
    redis_proxy.restore()
    assert wf.run(text="still during").status == "auto"  # not tried again yet: memory
    time.sleep(RETRY_AFTER)
    assert [wf.run(text="after").status for _ in range(3)] == ["auto"] * 3
    rows = recorded_runs(wf)
    assert [bool(degraded_guards(row)) for row in rows] == [False] + [True] * 6 + [False] * 3
    back = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
    assert len(back) == 2 and {m.split(":")[1].strip() for m in back} == {"rate_limit", "breaker"}
    guards = wf.plan().guards
    assert guards is not None and guards.rate is not None
    assert guards.rate.headroom() == [{"limit": "1000 requests/minute", "remaining": 996}]


def test_an_answer_to_a_call_begun_before_the_outage_does_not_end_it(caplog):
    """Concurrent calls: one still under way when another finds the store down may yet get
    its answer; that says nothing about the store now, so the outage (and its one warning)
    stands, and the store is not tried again before RETRY_AFTER."""
    caplog.set_level(logging.WARNING, logger="smallops")
    store = SharedStore("rate_limit", "Redis at x", "using this process's limit", (OSError,))
    under_way, release = threading.Event(), threading.Event()
    answers: list[str] = []

    def slow() -> str:
        under_way.set()
        release.wait(5)
        return "shared"

    def refused() -> str:
        raise ConnectionRefusedError("refused")

    earlier = threading.Thread(target=lambda: answers.append(store.call(slow, lambda: "local")))
    earlier.start()
    assert under_way.wait(5)
    assert store.call(refused, lambda: "local") == "local"
    release.set()
    earlier.join()
    assert answers == ["shared"] and store.degraded() is not None
    assert store.call(lambda: "shared", lambda: "local") == "local"
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    assert not [r for r in caplog.records if "answers again" in r.getMessage()]


# --- the budget's database -------------------------------------------------------------------


class LogDatabase:
    """A log database that can be taken away and given back.

    Postgres sits behind the TCP proxy (`cut` refuses, `stall` holds every byte); SQLite is
    "taken away" by another connection holding its write lock, as a long prune would.
    """

    def __init__(self, kind: str, url: str, path: Path | None, proxy: TcpProxy | None) -> None:
        self.kind, self.url, self._path, self._proxy = kind, url, path, proxy
        self._holder: sqlite3.Connection | None = None

    def cut(self) -> None:
        if self._proxy is not None:
            self._proxy.cut()
            return
        assert self._path is not None
        self._holder = sqlite3.connect(self._path, isolation_level=None)
        self._holder.execute("BEGIN EXCLUSIVE")

    def restore(self) -> None:
        if self._proxy is not None:
            self._proxy.restore()
        elif self._holder is not None:
            self._holder.execute("ROLLBACK")
            self._holder.close()
            self._holder = None


@pytest.fixture
def postgres_proxy(postgres_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """The test's Postgres schema, reached through a TCP proxy."""
    target = make_url(postgres_url)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    yield target.set(port=proxy.port).render_as_string(hide_password=False), proxy
    proxy.resume()
    proxy.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def log_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogDatabase]:
    if request.param == "sqlite":
        path = tmp_path / "log.db"
        database = LogDatabase("sqlite", f"sqlite:///{path}", path, None)
        yield database
        database.restore()
        return
    url, proxy = request.getfixturevalue("postgres_proxy")
    yield LogDatabase("postgres", url, None, proxy)


def budgeted(tmp_path: Path, database_url: str) -> Workflow[Any]:
    """A workflow with a daily budget far from its cap; each call costs about $0.001."""
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    settings = Settings(
        root=tmp_path,
        database_url=database_url,
        prices={"fake:priced": Price(input=1.0, output=10.0)},
    )
    return Workflow("budgeted", model="fake:priced", prompt="p.prompt", output=Triage,
                    fallback="review", provider=FakeProvider(lambda _: json.dumps(GOOD)),
                    max_tokens=100, budget=Budget(daily=100.0),
                    breaker=BreakerConfig(min_calls=3), base_dir=tmp_path,
                    settings=settings)  # fmt: skip


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    return call(), time.monotonic() - started


def wait_for_runs(wf: Workflow[Any], count: int) -> list[dict[str, Any]]:
    """The recorded runs once `count` are in (the writer replays its spool when the database
    is back)."""
    deadline = time.monotonic() + 20
    while len(found := recorded_runs(wf)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def test_with_the_database_down_a_budgeted_call_goes_to_the_fallback_as_budget_unavailable(
    tmp_path, log_database
):
    """The budget fails closed: calls go to the fallback with `budget_unavailable`, nothing is
    raised, the breaker does not count them, and the budget is used again once the database
    answers."""
    wf = budgeted(tmp_path, log_database.url)
    assert wf.run(text="before").status == "pending_review"
    log_database.cut()
    outage = [timed(lambda: wf.run(text="during")) for _ in range(20)]
    results = [result for result, _ in outage]
    assert {(r.status, r.error) for r in results} == {("queued_for_human", "budget_unavailable")}
    assert "the budget cannot be checked: the log database did not answer" in str(
        results[0].error_message
    )
    seconds = [s for _, s in outage]
    assert seconds[0] < BUDGET_WAIT + 1 and max(seconds[1:]) < 0.5  # only the first one waits
    log_database.restore()
    time.sleep(RETRY_AFTER)
    assert wf.run(text="after").status == "pending_review"

    guards = wf.plan().guards
    assert guards is not None and guards.breaker is not None and guards.breaker_config
    assert guards.breaker.state(guards.breaker_key, guards.breaker_config)["calls"] == 2
    rows = wait_for_runs(wf, 22)
    assert Counter(r["error_type"] for r in rows) == {None: 2, "budget_unavailable": 20}
    refused = [r for r in rows if r["error_type"] == "budget_unavailable"]
    assert all(r["guards"][0]["decision"] == "unavailable" for r in refused)
    assert all(r["attempt_count"] == 0 for r in refused)


def test_a_stalled_postgres_holds_a_budgeted_call_for_seconds_not_forever(tmp_path, postgres_proxy):
    """Postgres stops answering (bytes held): the call that meets it waits BUDGET_WAIT, the
    next ones none; a reservation that completes after the stall is given back."""
    url, proxy = postgres_proxy
    wf = budgeted(tmp_path, url)
    assert wf.run(text="before").status == "pending_review"
    proxy.stall()
    outage = [timed(lambda: wf.run(text="during")) for _ in range(5)]
    assert [r.error for r, _ in outage] == ["budget_unavailable"] * 5
    assert outage[0][1] < BUDGET_WAIT + 1 and max(s for _, s in outage[1:]) < 0.5
    proxy.resume()
    rows = wait_for_runs(wf, 6)
    assert len(rows) == 6
    spent = sum(r["cost_usd"] or 0 for r in rows)
    engine = get_engine(normalise_url(url, tmp_path))
    deadline = time.monotonic() + 10
    while True:  # the late reservation and the first call's settlement land in the background
        with engine.connect() as connection:
            held = connection.execute(select(budget_spend.c.spent_usd)).scalar_one()
        if abs(held - spent) < 1e-9 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert held == pytest.approx(spent, abs=1e-9)


BUDGETED = textwrap.dedent("""
    from smallops import Budget, FakeProvider, Workflow

    budgeted = Workflow("budgeted", model="fake:priced", prompt="p.prompt", fallback="review",
                        review="none", provider=FakeProvider(lambda _: "ok"), max_tokens=100,
                        budget=Budget(daily=100.0))
""")


def budgeted_project(root: Path, database_url: str) -> Path:
    """A project whose one workflow has a daily budget far from its cap, and 300 inputs; a log
    write that takes over a second goes to the spool."""
    (root / "workflows").mkdir(parents=True)
    (root / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "{database_url}"\nwrite_timeout = 1\n'
        '[prices."fake:priced"]\ninput = 1.0\noutput = 10.0\n'
    )
    (root / "workflows" / "p.prompt").write_text("[user]\n{{ text }}")
    (root / "workflows" / "budgeted.py").write_text(BUDGETED)
    lines = (json.dumps({"text": f"message {i}"}) for i in range(INPUTS))
    (root / "inputs.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_a_300_input_run_with_the_database_down_for_its_budget_accounts_for_every_input(
    tmp_path, log_database, capsys
):
    """`smallops run --input` of 300 inputs on a budgeted workflow while the log database does
    not answer: each call goes to the fallback as budget_unavailable, with no traceback; the
    runs wait in the spool, all 300 are recorded once the database is back, and `smallops
    status` then shows the outage."""
    project = budgeted_project(tmp_path / "project", log_database.url)
    code, out, err = smallops(
        capsys, "-p", str(project), "run", "budgeted", "--json", '{"text": "before"}', "--json"
    )
    assert code == 0 and json.loads(out)["status"] == "auto", err
    log_database.cut()
    code, out, err = smallops(
        capsys, "-p", str(project), "run", "budgeted", "-i", str(project / "inputs.jsonl"),
        "-c", "20", "--json",
    )  # fmt: skip
    assert code == 3 and "Traceback" not in err, err  # 3: the records wait in the spool
    printed = [json.loads(line) for line in out.splitlines()]
    assert [p["line"] for p in printed] == list(range(1, INPUTS + 1))
    assert {(p["status"], p["error"]) for p in printed} == {
        ("queued_for_human", "budget_unavailable")
    }
    log_database.restore()

    code, out, err = smallops(capsys, "-p", str(project), "status", "--json")  # replays
    assert code == 0 and "Traceback" not in err, err
    row = json.loads(out)
    engine = get_engine(normalise_url(log_database.url, project))
    with engine.connect() as connection:
        rows = connection.execute(select(runs.c.id, runs.c.error_type, runs.c.guards)).all()
    refused = [r for r in rows if r.error_type == "budget_unavailable"]
    assert len(rows) == INPUTS + 1 and len(refused) == INPUTS
    assert {r.id for r in refused} == {p["run_id"] for p in printed}
    assert all(r.guards[0]["decision"] == "unavailable" for r in refused)
    [outage] = row["refusals"]
    assert outage["error_type"] == "budget_unavailable" and outage["calls"] == INPUTS
    assert outage["last_at"]
    code, out, _ = smallops(capsys, "-p", str(project), "status")
    assert code == 0 and f"refused   {INPUTS} calls budget_unavailable" in out, out
