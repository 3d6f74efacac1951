"""The review UI when the database is down or stalled: 503s that say so, decisions that say
whether they were saved, one log line per outage, and a server that stops in bounded time."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from smallops import FakeProvider, Settings, Workflow
from smallops.review.desk import ReviewDesk
from smallops.review.queue import Decision
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.schema import review_items

from models import GOOD, Triage
from tcpproxy import TcpProxy

pytest.importorskip("starlette", reason="the web extra is not installed")
from starlette.testclient import TestClient

from smallops.web.app import create_app
from smallops.web.outage import RETRY_EVERY

JSON_HEADERS = {"Accept": "application/json"}
HTML_HEADERS = {"Accept": "text/html,application/xhtml+xml"}


@dataclass
class Backend:
    """A log database the desk reaches through something the test can take away."""

    desk_url: str  # what the app uses
    direct_url: str  # what the test uses to write runs and look at the result
    cut: Callable[[], None]
    restore: Callable[[], None]
    proxy: TcpProxy | None = None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """SQLite whose folder disappears, or Postgres behind a proxy that refuses connections."""
    if request.param == "sqlite":
        folder = tmp_path / "db"
        url = f"sqlite:///{folder / 'log.db'}"

        def cut() -> None:
            get_engine(normalise_url(url, tmp_path)).dispose()  # no open connection to reuse
            folder.rename(tmp_path / "db-away")

        def restore() -> None:
            (tmp_path / "db-away").rename(folder)

        yield Backend(url, url, cut, restore)
        return
    postgres = request.getfixturevalue("postgres_url")
    direct = make_url(normalise_url(postgres, tmp_path))
    proxy = TcpProxy((direct.host or "127.0.0.1", direct.port or 5432))
    proxied = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        yield Backend(proxied, postgres, proxy.cut, proxy.restore, proxy)
    finally:
        proxy.close()


def queued(tmp_path: Path, url: str, count: int) -> list[str]:
    """`count` runs waiting for review in the database at `url`."""
    (tmp_path / "triage.prompt").write_text("[user]\n{{ text }}")
    wf = Workflow(
        "triage",
        model="fake:rules",
        prompt="triage.prompt",
        output=Triage,
        provider=FakeProvider(lambda _: GOOD),
        base_dir=tmp_path,
        retries=0,
        fallback="review",
        settings=Settings(root=tmp_path, database_url=url),
    )
    ids = [wf.run(text=f"email {i}").run_id for i in range(count)]
    assert wf.plan().writer.flush()
    return ids


def serve(
    tmp_path: Path, backend: Backend, desk_class: type[ReviewDesk] = ReviewDesk, **options: Any
) -> tuple[TestClient, ReviewDesk]:
    engine = get_engine(normalise_url(backend.desk_url, tmp_path))
    ensure_schema(engine)
    desk = desk_class(engine, {})
    app = create_app(
        desk,
        Settings(root=tmp_path),
        require_login=False,
        reviewer="ann",
        secret_key=b"test-secret-key",
        env={},
        **options,
    )
    return TestClient(app, base_url="http://127.0.0.1"), desk


def item_row(backend: Backend, tmp_path: Path, run_id: str) -> Any:
    engine = create_engine(normalise_url(backend.direct_url, tmp_path))
    try:
        with engine.connect() as connection:
            return connection.execute(
                select(review_items).where(review_items.c.run_id == run_id)
            ).one()
    finally:
        engine.dispose()


def csrf(client: TestClient) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text)
    assert match
    return match.group(1)


def back_within(client: TestClient, seconds: float) -> float | None:
    """How long the queue took to answer 200 again (asked every 0.1 s), or None if it did not
    within `seconds`: a database known to be down is tried again only every few seconds."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if client.get("/", headers=JSON_HEADERS).status_code == 200:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def outage_lines(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """(the "unreachable" warnings, the "is back" lines) logged so far; no traceback allowed."""
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    messages = [r.getMessage() for r in caplog.records]
    down = [m for m in messages if "unreachable" in m]
    return down, [m for m in messages if m.endswith(" is back")]


def test_pages_answer_503_in_json_and_html_and_the_outage_is_logged_once(tmp_path, backend, caplog):
    """50 requests to a database that is gone: 503s with Retry-After, one warning, then one
    line when it is back."""
    [run_id] = queued(tmp_path, backend.direct_url, 1)
    client, _ = serve(tmp_path, backend)
    assert client.get("/", headers=JSON_HEADERS).status_code == 200
    backend.cut()
    with caplog.at_level(logging.INFO):
        for round_ in range(50):
            path = "/" if round_ % 2 else f"/items/{run_id}"
            answer = client.get(path, headers=JSON_HEADERS)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
            body = answer.json()
            assert set(body) == {"error", "hint"} and "unreachable" in body["error"]
        page = client.get(f"/items/{run_id}", headers=HTML_HEADERS)
        assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
        assert "the database is unreachable" in page.text
        assert page.headers["retry-after"] == "5"
        down, back = outage_lines(caplog)
        assert len(down) == 1 and not back
        backend.restore()
        assert back_within(client, 10)
        assert client.get("/", headers=JSON_HEADERS).status_code == 200
        down, back = outage_lines(caplog)
        assert len(down) == 1 and len(back) == 1


def test_a_decision_saved_before_the_next_item_failed_is_reported_as_saved(tmp_path, backend):
    """The database goes away right after the decision commits: the answer says it is saved
    (JSON 200 with a note, an HTML page saying so) and the item is decided."""

    class CutAfterDeciding(ReviewDesk):
        def approve(self, run_id: str, reviewer: str) -> Decision:
            decision = super().approve(run_id, reviewer)
            backend.cut()
            return decision

    first, second, _third = queued(tmp_path, backend.direct_url, 3)
    client, _ = serve(tmp_path, backend, CutAfterDeciding)
    token = csrf(client)
    answer = client.post(f"/items/{first}/approve", json={})
    assert answer.status_code == 200
    body = answer.json()
    assert body["saved"] is True and body["decision"]["status"] == "approved"
    assert body["next"] is None and "saved" in body["note"] and "unreachable" in body["note"]
    backend.restore()
    assert back_within(client, 10)
    page = client.post(f"/items/{second}/approve", data={"csrf": token}, headers=HTML_HEADERS)
    assert page.status_code == 200
    assert "Saved." in page.text and "The queue could not be loaded" in page.text
    backend.restore()
    assert item_row(backend, tmp_path, first).state == "approved"
    assert item_row(backend, tmp_path, second).state == "approved"


def test_a_decision_the_database_never_got_is_a_503_that_says_it_was_not_saved(tmp_path, backend):
    [run_id] = queued(tmp_path, backend.direct_url, 1)
    client, _ = serve(tmp_path, backend)
    token = csrf(client)
    backend.cut()
    answer = client.post(f"/items/{run_id}/approve", json={})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert answer.json()["saved"] is False and "not saved" in answer.json()["error"]
    page = client.post(f"/items/{run_id}/approve", data={"csrf": token}, headers=HTML_HEADERS)
    assert page.status_code == 503 and "the decision was not saved" in page.text
    backend.restore()
    assert item_row(backend, tmp_path, run_id).state == "pending"


@pytest.mark.postgres
def test_while_the_database_stalls_pages_answer_503_at_once_and_work_again_soon_after(
    tmp_path, postgres_url, caplog
):
    """The first request waits for the call bound (plus one connect timeout), not forever; while
    the database is known to be down the next ones are answered at once (30 of them took 155 s
    when each waited), a decision among them not saved; after it resumes, pages work again within
    seconds, and the log says each once."""
    backend = _proxied(tmp_path, postgres_url)
    [run_id] = queued(tmp_path, backend.direct_url, 1)
    client, _ = serve(tmp_path, backend, db_timeout=1.0)
    assert client.get(f"/items/{run_id}", headers=JSON_HEADERS).status_code == 200
    assert backend.proxy is not None
    backend.proxy.stall()
    try:
        with caplog.at_level(logging.INFO):
            started = time.monotonic()
            answer = client.get("/", headers=JSON_HEADERS)
            assert answer.status_code == 503 and time.monotonic() - started < 10
            down, _ = outage_lines(caplog)
            assert len(down) == 1 and "no answer within 1 s" in down[0]
            started = time.monotonic()
            for round_ in range(20):
                path = "/" if round_ % 2 else f"/items/{run_id}"
                answer = client.get(path, headers=JSON_HEADERS)
                assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
                assert time.monotonic() - started < 2, f"request {round_ + 1} waited"
            decision = client.post(f"/items/{run_id}/approve", json={})
            assert decision.status_code == 503 and decision.json()["saved"] is False
            assert time.monotonic() - started < 2
            backend.proxy.resume()
            took = back_within(client, 15)
            assert took is not None and took < 10
            assert len(outage_lines(caplog)[0]) == 1 and len(outage_lines(caplog)[1]) == 1
        assert item_row(backend, tmp_path, run_id).state == "pending"
    finally:
        backend.proxy.close()


@pytest.mark.postgres
def test_a_database_that_stalls_before_the_first_request_still_gets_a_503_within_seconds(
    tmp_path, postgres_url
):
    """The connection the server opened at start is bounded too: its first use (a ping) hung
    for good when it stalled before any page was asked for."""
    backend = _proxied(tmp_path, postgres_url)
    queued(tmp_path, backend.direct_url, 1)
    client, _ = serve(tmp_path, backend, db_timeout=1.0)  # it opened a connection, to set up
    assert backend.proxy is not None
    backend.proxy.stall()
    try:
        started = time.monotonic()
        assert client.get("/", headers=JSON_HEADERS).status_code == 503
        assert time.monotonic() - started < 10
    finally:
        backend.proxy.close()


@pytest.mark.postgres
def test_a_database_known_to_be_down_is_tried_by_one_request_at_a_time(tmp_path, postgres_url):
    """Once a retry is due, ten requests at once on the stalled database: one of them tries it,
    the other nine are answered without touching it."""
    tries: list[str] = []

    class CountingDesk(ReviewDesk):
        def item(self, run_id: str) -> dict[str, Any]:
            tries.append(run_id)
            return super().item(run_id)

    backend = _proxied(tmp_path, postgres_url)
    [run_id] = queued(tmp_path, backend.direct_url, 1)
    client, _ = serve(tmp_path, backend, CountingDesk, db_timeout=1.0)
    assert backend.proxy is not None
    backend.proxy.stall()
    try:
        assert client.get(f"/items/{run_id}", headers=JSON_HEADERS).status_code == 503
        time.sleep(RETRY_EVERY + 0.2)  # the retry is due
        tries.clear()
        with ThreadPoolExecutor(10) as pool:
            asked = pool.map(
                lambda _: client.get(f"/items/{run_id}", headers=JSON_HEADERS), range(10)
            )
            assert {answer.status_code for answer in asked} == {503}
        assert len(tries) == 1
    finally:
        backend.proxy.close()


def _proxied(tmp_path: Path, postgres_url: str) -> Backend:
    direct = make_url(normalise_url(postgres_url, tmp_path))
    proxy = TcpProxy((direct.host or "127.0.0.1", direct.port or 5432))
    proxied = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    return Backend(proxied, postgres_url, proxy.cut, proxy.restore, proxy)


def test_the_webhook_sender_logs_an_outage_once_not_every_round(tmp_path, backend, caplog):
    queued(tmp_path, backend.direct_url, 1)
    client, _ = serve(tmp_path, backend, webhook_interval=0.02)
    backend.cut()
    with caplog.at_level(logging.INFO), client:
        time.sleep(1.0)  # about fifty rounds
    down, _ = outage_lines(caplog)
    assert len(down) == 1
    assert not [r for r in caplog.records if "webhook delivery failed" in r.getMessage()]
    backend.restore()


@pytest.mark.postgres
def test_an_outage_is_told_apart_from_a_bad_query(tmp_path, postgres_url):
    """Outages (503) are errors of reaching the database, never a query's own mistakes (500)."""
    from sqlalchemy import exc, text

    from smallops.storage.health import unreachable

    def error_of(url: str, sql: str) -> exc.SQLAlchemyError:
        engine = create_engine(url, connect_args={"connect_timeout": 2} if "psycopg" in url else {})
        try:
            with engine.begin() as connection:
                connection.execute(text(sql))
        except exc.SQLAlchemyError as caught:
            return caught
        finally:
            engine.dispose()
        raise AssertionError(f"{sql!r} did not fail")

    sqlite = f"sqlite:///{tmp_path / 'ok.db'}"
    postgres = normalise_url(postgres_url, tmp_path)
    assert unreachable(error_of(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", "select 1"))
    assert unreachable(error_of("postgresql+psycopg://postgres@127.0.0.1:1/none", "select 1"))
    assert unreachable(error_of(postgres, "select pg_terminate_backend(pg_backend_pid())"))
    for url in (sqlite, postgres):
        assert not unreachable(error_of(url, "selec 1"))
        assert not unreachable(error_of(url, "select * from no_such_table"))
        assert not unreachable(error_of(url, "select 1/0" if url == postgres else "select x()"))


@pytest.mark.postgres
def test_the_watchdog_cuts_a_call_without_an_answer_but_not_a_run_of_quick_ones(postgres_url):
    from sqlalchemy import exc, text

    from smallops.storage.watchdog import bound_calls

    engine = create_engine(normalise_url(postgres_url, Path.cwd()))
    watchdog = bound_calls(engine, 1.0)
    assert watchdog is not None
    try:
        with engine.connect() as connection:
            until = time.monotonic() + 2.5
            while time.monotonic() < until:
                connection.execute(text("select pg_sleep(0.01)"))
            assert watchdog.cuts == 0
            started = time.monotonic()
            with pytest.raises(exc.OperationalError):
                connection.execute(text("select pg_sleep(30)"))
            assert time.monotonic() - started < 3 and watchdog.cuts == 1
        with engine.connect() as connection:  # the pool carries on with a new connection
            assert connection.execute(text("select 1")).scalar() == 1
    finally:
        engine.dispose()


def test_unclaim_gives_back_only_what_the_reviewer_still_holds(tmp_path, database_url):
    mine, theirs, decided = queued(tmp_path, database_url, 3)
    desk = ReviewDesk(get_engine(normalise_url(database_url, tmp_path)), {})
    desk.claim(mine, "ann")
    desk.claim(theirs, "bob")
    desk.claim(decided, "ann")
    desk.approve(decided, "ann")
    assert desk.unclaim({mine: "ann", theirs: "ann", decided: "ann"}) == 1
    assert desk.item(mine)["claimed_by"] is None and desk.item(mine)["claimed_until"] is None
    assert desk.item(theirs)["claimed_by"] == "bob"
    assert desk.item(decided)["state"] == "approved"
    assert [h["action"] for h in desk.item(mine)["history"]] == []  # not recorded as a skip


# `smallops serve` as its own process, stopped with SIGTERM.


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str

    def get(self, path: str, timeout: float = 30) -> Any:
        request = urllib.request.Request(self.url + path, headers=JSON_HEADERS)
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())

    def post(self, path: str, timeout: float = 30) -> Any:
        """A JSON POST (a login-free local server needs no CSRF token for one)."""
        request = urllib.request.Request(
            self.url + path,
            data=b"{}",
            headers={**JSON_HEADERS, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())

    def stop(self, within: float, how: int = signal.SIGTERM) -> tuple[int, float, str]:
        """SIGTERM (or SIGINT: Ctrl-C); (exit code, seconds it took, stderr)."""
        started = time.monotonic()
        self.process.send_signal(how)
        try:
            _, err = self.process.communicate(timeout=within + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, time.monotonic() - started, err


@pytest.fixture
def smallops_serve(project: Path) -> Iterator[Callable[[str], Served]]:
    """Start `smallops serve` on the project with SMALLOPS_DATABASE_URL set to a URL."""
    started: list[Served] = []

    def start(database_url: str) -> Served:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "SMALLOPS_DATABASE_URL": database_url, "SMALLOPS_REVIEWER": "ann"}
        command = ["-p", str(project), "serve", "--port", str(port)]
        process = subprocess.Popen(
            [sys.executable, "-c", "from smallops.cli import main; main()", *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        served = Served(process, f"http://127.0.0.1:{port}")
        started.append(served)
        deadline = time.monotonic() + 60
        while True:
            try:
                served.get("/", timeout=5)
                return served
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "smallops serve did not start"
                time.sleep(0.1)

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
            served.process.communicate()


STOPPED = (0, -signal.SIGTERM)  # a clean exit, or uvicorn re-raising the SIGTERM it handled


def test_serve_gives_back_the_items_its_reviewers_hold_when_it_stops(
    tmp_path, backend, smallops_serve
):
    held, _ = queued(tmp_path, backend.direct_url, 2)
    served = smallops_serve(backend.desk_url)
    assert served.post(f"/items/{held}/claim")["item"]["claimed_by"] == "ann"
    assert item_row(backend, tmp_path, held).claimed_by == "ann"
    code, took, err = served.stop(within=15)
    assert code in STOPPED and took < 15, err
    assert "Traceback" not in err and "could not give" not in err, err
    row = item_row(backend, tmp_path, held)
    assert row.claimed_by is None and row.claimed_until is None and row.state == "pending"


@pytest.mark.postgres
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_serve_stops_within_seconds_while_the_database_stalls(
    tmp_path, postgres_url, smallops_serve, how
):
    """A request hangs on the stalled database when the signal comes: the server still exits
    within 15 s, and says in one line that the held item could not be given back."""
    backend = _proxied(tmp_path, postgres_url)
    [held] = queued(tmp_path, backend.direct_url, 1)
    served = smallops_serve(backend.desk_url)
    assert served.post(f"/items/{held}/claim")["item"]["claimed_by"] == "ann"
    assert backend.proxy is not None
    backend.proxy.stall()
    answers: list[Any] = []
    in_flight = threading.Thread(target=_answer, args=(served, "/", answers), daemon=True)
    in_flight.start()
    time.sleep(0.5)
    code, took, err = served.stop(within=15, how=how)
    assert code in (*STOPPED, 130) and took < 15, err
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if "could not give back 1 claimed" in line]
    assert len(said) == 1 and "leases expire on their own" in said[0]
    if how == signal.SIGINT:  # the loop finishes its requests: the one in flight gets a 503
        in_flight.join(5)
        assert answers and answers[0][0] == 503 and set(answers[0][1]) == {"error", "hint"}
    backend.proxy.resume()
    assert item_row(backend, tmp_path, held).claimed_by == "ann"  # its lease expires instead
    backend.proxy.close()


def _answer(served: Served, path: str, answers: list[Any]) -> None:
    """(status, JSON body) of a GET, or nothing if the connection just closed."""
    try:
        answers.append((200, served.get(path)))
    except urllib.error.HTTPError as refused:
        answers.append((refused.code, json.loads(refused.read())))
    except (urllib.error.URLError, ConnectionError):
        pass


def test_the_pages_database_threads_are_bounded_and_configurable(monkeypatch):
    """At most SMALLOPS_WEB_DB_THREADS calls run at once (8 by default); a value that is not a
    number of threads is one readable error, not a traceback when the first page loads."""
    import asyncio

    from smallops.errors import ConfigError
    from smallops.web.outage import THREADS, THREADS_ENV, Database

    engine = create_engine("sqlite://")
    assert Database(engine, None).threads == THREADS == 8
    monkeypatch.setenv(THREADS_ENV, "3")
    db = Database(engine, None)
    running, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def many() -> None:
        await asyncio.gather(*(db.call(work) for _ in range(12)))

    asyncio.run(many())
    assert most == 3
    for bad in ("0", "abc", "65", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ConfigError, match="is not a number of threads"):
            Database(engine, None)
