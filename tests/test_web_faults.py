"""Every page as an attacker and a tired user meet it: hostile query and path values, no login,
stored content that is markup, a database that is gone or stalled, and raw bytes over a real
socket. The answer is always a styled page or the JSON error shape, with the right status
(400, 404, 401/303, 503), never a 500 or a traceback; stored text is escaped everywhere,
inside the SVG charts and attributes too. On SQLite and Postgres."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import literal, update

from smallops.dashboards.runs import PARAMS
from smallops.ids import uuid7
from smallops.review.triage import cursor_of
from smallops.storage.schema import RUN_COLUMNS, eval_results, eval_runs, review_items, runs

from models import GOOD

pytest.importorskip("starlette", reason="the web extra is not installed")
from starlette.testclient import TestClient

from smallops.web import auth
from test_dashboard_overview import run_row, write
from test_eval_history import two_eval_runs
from test_web import JSON_HEADERS, PASSWORD, make, serve
from test_web_outage import Backend, _proxied, queued
from test_web_outage import backend as backend  # the fixture: SQLite or Postgres taken away
from test_web_outage import serve as serve_backend

from live_server import serving_app

HTML_HEADERS = {"Accept": "text/html"}
T = {"t": "2026-11-01T00:00:00+00:00"}
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
LINK = "javascript:alert(3)"
VERSION = "<script>&\"'v</b>"  # prompt versions hold 16 characters


def no_redirects(client: TestClient) -> TestClient:
    """The same app, answering 500s instead of raising them, and not following redirects."""
    return TestClient(
        client.app,
        base_url="http://127.0.0.1",
        raise_server_exceptions=False,
        follow_redirects=False,
    )


def assert_error(answer: Any, status: int | tuple[int, ...], what: str = "") -> dict[str, Any]:
    """A refusal in the JSON error shape: one readable line and a hint."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert answer.status_code in statuses, (what, answer.status_code, answer.text[:300])
    body = answer.json()
    assert set(body) == {"error", "hint"}, (what, body)
    assert "\n" not in body["error"] and len(body["error"]) <= 400, (what, body["error"][:200])
    return dict(body)


def assert_page(answer: Any, status: int | tuple[int, ...], what: str = "") -> str:
    """A refusal as the app's error page, not a server's bare text or a traceback."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert answer.status_code in statuses, (what, answer.status_code)
    assert answer.headers["content-type"].startswith("text/html"), what
    assert "error-page" in answer.text and "Traceback" not in answer.text, what
    return str(answer.text)


# Hostile values on every page -------------------------------------------------------------------


def cursor(values: list[Any]) -> str:
    """A queue cursor as an attacker writes one: the server's format, other values."""
    raw = json.dumps(values).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


VALUES = [
    "%00",
    "a%00b",
    "%07",
    "%0d%0aSet-Cookie:%20x=1",
    "%ff",
    "%ed%a0%80",  # a lone surrogate, as UTF-8
    "%c3",  # half a character
    "%",
    "%25",
    "x" * 30_000,  # the test client's URLs stop at 64 KiB; the 100 KB one goes by socket
    "NaN",
    "inf",
    "-1",
    "1e309",
    "9" * 40,
    "%C2%B2",  # ², a digit to isdigit() and not to int()
    "nonsense",
    quote(HOSTILE, safe=""),
]


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> dict[str, Any]:
    """Two eval runs, a queued item and a run, and a client that does not raise 500s."""
    client, first, second = two_eval_runs(tmp_path, database_url)
    wf = make(tmp_path, database_url)
    run_id = wf.run(text="a queued email").run_id
    assert wf.plan().writer.flush()
    return {"client": no_redirects(client), "first": first, "second": second, "run_id": run_id}


def hostile_gets(value: str, site: dict[str, Any]) -> list[str]:
    """Every page with `value` in each query or path place it reads."""
    first, second, run_id = site["first"], site["second"], site["run_id"]
    return [
        f"/?workflow={value}",
        f"/?state={value}",
        f"/?sort={value}",
        f"/?after={value}",
        f"/?note={value}&done=approve&prev={value}",
        f"/items/{value}",
        f"/items/{run_id}?workflow={value}",
        f"/dashboard?since={value}",
        f"/workflows/{value}",
        f"/workflows/triage?since={value}",
        f"/workflows/triage?until={value}",
        *(f"/runs?{name}={value}" for name in PARAMS),
        f"/runs/{value}",
        f"/evals?workflow={value}",
        f"/evals?before={value}",
        f"/evals/{value}",
        f"/evals/compare?a={value}&b={second}",
        f"/evals/compare?a={first}&b={value}",
        f"/login?next={value}",
    ]


def test_hostile_query_and_path_values_are_never_a_500_on_any_page(site):
    """Each value in each place, as JSON and as HTML: a page, a redirect, or a styled
    refusal in one line; never a 500. (Before the fixes: a NUL in ?workflow= or an item id
    reached psycopg, ?limit=² failed int(), and a 60 KB ?state= came back in the message.)"""
    client = site["client"]
    for value in VALUES:
        for path in hostile_gets(value, site):
            answer = client.get(path, headers=JSON_HEADERS)
            # 405: Starlette routes the decoded path, so a "/" in a value can split an id
            if answer.status_code >= 400:
                assert_error(answer, (400, 404, 405), path[:120])
            else:
                assert answer.status_code in (200, 303), (path[:120], answer.status_code)
            page = client.get(path, headers=HTML_HEADERS)
            assert page.status_code == answer.status_code, path[:120]
            if page.status_code >= 400:
                assert_page(page, (400, 404, 405), path[:120])


def test_what_the_database_cannot_take_is_refused_before_it_gets_there(site):
    """The requests that were 500s, each with the status and the message it has now."""
    client, run_id = site["client"], site["run_id"]
    refused = {
        "/?workflow=%00": (400, "?workflow= holds a NUL character"),
        "/?workflow=a%07b": (400, "?workflow= holds the control character U+0007"),
        "/?state=" + "x" * 5000: (400, "?state= is 5,000 characters long"),
        "/items/%00": (404, "there is no review item for run '\\x00'"),
        f"/items/{run_id}%00": (404, "there is no review item for run"),
        f"/items/{run_id}?workflow=%00": (400, "?workflow= holds a NUL character"),
        "/runs?limit=%C2%B2": (400, "is not a number from 1 to 200"),
        "/runs?q=%00": (400, "?q= holds a NUL character"),
        "/runs/%00": (404, "there is no run"),
        "/runs?since=0001-01-01T00:00:00%2B14:00": (400, "is outside the years 1 to 9999"),
        "/runs?until=9999-12-31T23:59:59-14:00": (400, "is outside the years 1 to 9999"),
        "/evals/%00": (404, "there is no eval run"),
        "/evals?workflow=%00": (400, "?workflow= holds a NUL character"),
        "/workflows/tri%00age": (404, "there is no workflow"),
    }
    for bad in (
        [10**23, T, run_id],  # a rank no database binds
        [-1, T, run_id],
        [T, "a\u0000b"],  # a NUL for Postgres
        [T, "a\ud800b"],  # a lone surrogate for both
        [{"t": "0001-01-01T00:00:00+14:00"}, run_id],  # before the year 1 in UTC
        [{"t": "9999-12-31T23:59:59-14:00"}, run_id],  # after 9999 in UTC
        [True, T, run_id],
    ):
        refused[f"/?sort=urgency&after={cursor(bad)}"] = (400, "the page cursor (?after=)")
    for path, (status, said) in refused.items():
        body = assert_error(client.get(path, headers=JSON_HEADERS), status, path[:80])
        assert said in body["error"], (path[:80], body)
        assert_page(client.get(path, headers=HTML_HEADERS), status, path[:80])
    # a cursor the server made is still taken, and the queue still filters
    made = cursor_of([1, datetime.now(timezone.utc), run_id])
    assert client.get(f"/?sort=urgency&after={made}", headers=JSON_HEADERS).status_code == 200
    assert client.get("/?workflow=triage", headers=JSON_HEADERS).json()["counts"]


def test_a_range_before_the_year_1000_draws_its_page(site):
    """strftime wrote the year 1 as '1', which the chart could not read back: a 500."""
    client = site["client"]
    for query in ("since=0001-01-01&until=0001-01-02", "since=0999-12-01&until=0999-12-03"):
        assert client.get(f"/workflows/triage?{query}").status_code == 200, query
        data = client.get(f"/workflows/triage?{query}", headers=JSON_HEADERS).json()
        assert data["days"][0]["day"].startswith("0"), query


def test_posted_hostile_values_change_nothing_and_are_refused_in_one_line(site):
    """The form's workflow goes into the next item's query: it is checked before a decision is
    saved, so a NUL never saves a decision and then fails."""
    client, run_id = site["client"], site["run_id"]
    as_json = {**JSON_HEADERS, "Content-Type": "application/json"}

    def post(path: str, body: dict[str, Any]) -> Any:
        return client.post(path, content=json.dumps(body), headers=as_json)

    for workflow in ("\x00", "tri\x00age", "x" * 100_000):
        body = assert_error(post("/next", {"workflow": workflow}), 400, "next")
        assert "the form's workflow" in body["error"]
        for action in ("approve", "skip", "reject"):
            answer = post(f"/items/{run_id}/{action}", {"workflow": workflow, "reason": "no"})
            assert_error(answer, 400, action)
        assert_error(post(f"/items/{run_id}/claim", {"workflow": workflow}), 400, "claim")
    for bad in ("%00", "a%00b", "x" * 300):
        for action in ("claim", "approve", "reject"):
            assert_error(post(f"/items/{bad}/{action}", {"reason": "no"}), 404, bad[:10])
    body = assert_error(post(f"/items/{run_id}/" + "x" * 5000, {}), 404, "action")
    assert len(body["error"]) < 100
    item = client.get(f"/items/{run_id}", headers=JSON_HEADERS).json()["item"]
    assert item["state"] == "pending" and item["history"] == []
    # with a plain workflow the same decision goes through
    answer = post(f"/items/{run_id}/approve", {"workflow": "triage"})
    assert answer.status_code == 200 and answer.json()["saved"] is True


# Login ----------------------------------------------------------------------------------------


def test_every_page_needs_a_login_in_html_and_json(tmp_path, database_url):
    """Not logged in: a browser is sent to the login page, a script gets a 401 in the JSON
    error shape, with none of the page's data; logged in, the same addresses answer."""
    _, first, second = two_eval_runs(tmp_path, database_url)
    wf = make(tmp_path, database_url)
    run_id = wf.run(text="email").run_id
    reviewers = {"dana": auth.hash_password(PASSWORD)}
    guarded_client, _ = serve([wf], require_login=True, reviewers=reviewers)
    http = no_redirects(guarded_client)
    pages = [
        "/",
        f"/items/{run_id}",
        "/dashboard",
        "/workflows/triage",
        "/runs",
        f"/runs/{run_id}",
        "/evals",
        f"/evals/{first}",
        f"/evals/compare?a={first}&b={second}",
    ]
    for path in pages:
        page = http.get(path, headers=HTML_HEADERS)
        assert page.status_code == 303, path
        assert page.headers["location"] == "/login?next=" + quote(path.split("?")[0], safe=""), path
        body = assert_error(http.get(path, headers=JSON_HEADERS), 401, path)
        assert body["error"] == "login required"
        wrong = http.get(path, headers={**JSON_HEADERS, "Authorization": "Bearer wrong"})
        assert_error(wrong, 401, path)
        forged = {**JSON_HEADERS, "Cookie": f"{auth.SESSION_COOKIE}=dana.x.y"}
        assert_error(http.get(path, headers=forged), 401, path)
    login = http.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', login.text)
    assert token
    form = {"csrf": token.group(1), "name": "dana", "password": PASSWORD, "next": "/"}
    assert http.post("/login", data=form).status_code == 303
    for path in pages:
        assert http.get(path, headers=JSON_HEADERS).status_code == 200, path


# Escaping -------------------------------------------------------------------------------------


def hostile_log(tmp_path: Path, database_url: str) -> dict[str, Any]:
    """A log whose every user-written text is markup: the queued item's input and output, a
    workflow's name and prompt version, a run's error message and inputs, eval case ids, eval
    errors and prompt versions, eval workflow names."""
    _, first, second = two_eval_runs(tmp_path, database_url)
    wf = make(tmp_path, database_url, lambda _: {**GOOD, "summary": HOSTILE})
    run_id = wf.run(text=f"{HOSTILE} {LINK}").run_id
    assert wf.plan().writer.flush()
    client, desk = serve([wf])
    engine = desk.engine
    row = dict(zip(RUN_COLUMNS, run_row(HOSTILE, datetime.now(timezone.utc)), strict=True))
    row.update(
        status="failed",
        error_type="server_error",
        error_message=HOSTILE,
        prompt_version=VERSION,
        inputs=json.dumps({"text": HOSTILE, "link": LINK}),
        output=json.dumps({"summary": HOSTILE}),
    )
    yesterday = dict(row, id=uuid7(), started_at=row["started_at"] - 86400)
    write(engine, [tuple(r[name] for name in RUN_COLUMNS) for r in (row, yesterday)])
    with engine.begin() as connection:
        connection.execute(update(review_items).values(workflow=HOSTILE))
        connection.execute(update(runs).where(runs.c.id == run_id).values(workflow=HOSTILE))
        connection.execute(
            update(eval_results).values(
                case_id=literal(HOSTILE) + eval_results.c.case_id, error=HOSTILE
            )
        )
        for eval_run, version in ((first, VERSION), (second, VERSION[:-1] + "w")):
            connection.execute(
                update(eval_runs)
                .where(eval_runs.c.id == eval_run)
                .values(workflow=HOSTILE, prompt_version=version)
            )
    return {
        "client": no_redirects(client),
        "run_id": run_id,
        "logged_run": row["id"],
        "first": first,
        "second": second,
    }


def svgs(html: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", html, re.S)


def assert_escaped(html: str, where: str) -> None:
    """No markup from the log got through; its text did, escaped."""
    assert "<script>alert" not in html and "<img src=x" not in html, where
    assert "<script>&" not in html and "</b>" not in html, where
    assert not re.search(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", html, re.I), where
    assert "&lt;script&gt;" in html, where


def test_stored_markup_is_escaped_on_every_page_and_in_every_chart(tmp_path, database_url):
    log = hostile_log(tmp_path, database_url)
    client, run_id, first, second = log["client"], log["run_id"], log["first"], log["second"]
    hostile_path = "/workflows/" + quote(HOSTILE, safe="")
    pages = {
        "/": "the workflow's name in the counts and the previews",
        f"/?workflow={quote(HOSTILE)}": "the filter, reflected in links and hidden inputs",
        f"/items/{run_id}": "the input, the output in the form, the workflow",
        f"/items/{run_id}?workflow={quote(HOSTILE)}": "the filter in the forms' hidden inputs",
        "/dashboard": "the workflow's name, in its link and the charts' titles",
        hostile_path: "the name in the charts, the prompt version in its table",
        "/runs": "the workflow's name and the previews",
        f"/runs?q={quote(HOSTILE)}&workflow={quote(HOSTILE)}": "the search, reflected",
        f"/runs/{log['logged_run']}": "the error message, the inputs and the output",
        "/evals": "the eval workflow's name, its prompt versions and chart",
        f"/evals?workflow={quote(HOSTILE)}": "the chart's labels and point titles",
        f"/evals/{first}": "case ids, errors and outputs",
        f"/evals/compare?a={first}&b={second}": "case ids side by side",
        f"/evals/{quote(HOSTILE, safe='')}": "an unknown eval run id in the 404",
        f"/?state={quote(HOSTILE)}": "an unknown state in the 400",
    }
    for path, what in pages.items():
        page = client.get(path, headers=HTML_HEADERS)
        assert page.status_code in (200, 400, 404), (path, page.status_code)
        assert_escaped(page.text, f"{path}: {what}")
    for path in ("/dashboard", hostile_path, f"/evals?workflow={quote(HOSTILE)}"):
        charts = svgs(client.get(path).text)
        assert charts, path
        assert any("&lt;script&gt;" in chart for chart in charts), path
        for chart in charts:
            assert "<script" not in chart and "<img" not in chart, path
    evals = client.get(f"/evals?workflow={quote(HOSTILE)}").text
    assert 'aria-label="Pass rate of &lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;' in evals
    assert re.search(r"<title>[^<]*prompt &lt;script&gt;&amp;&#34;&#39;v&lt;/b&gt;", evals)
    item = client.get(f"/items/{run_id}?workflow={quote(HOSTILE)}").text
    assert 'name="workflow" value="&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img' in item
    assert LINK in client.get(f"/runs/{log['logged_run']}").text  # shown as text, not linked


# The database refused or stalled --------------------------------------------------------------


def outage_pages(run_id: str) -> list[str]:
    some_id = "00000000-0000-7000-8000-000000000000"
    return [
        "/",
        f"/items/{run_id}",
        "/dashboard",
        "/workflows/triage",
        "/runs",
        f"/runs/{run_id}",
        "/evals",
        f"/evals/{some_id}",
        f"/evals/compare?a={some_id}&b={some_id}",
    ]


def assert_unavailable(client: TestClient, path: str, within: float) -> None:
    started = time.monotonic()
    answer = client.get(path, headers=JSON_HEADERS)
    body = assert_error(answer, 503, path)
    assert "unreachable" in body["error"] and answer.headers["retry-after"] == "5", path
    page = client.get(path, headers=HTML_HEADERS)
    text = assert_page(page, 503, path)
    assert "The database is unavailable" in text and f'href="{path.split("?")[0]}"' in text
    assert time.monotonic() - started < within, path


def test_every_page_answers_503_when_the_database_is_gone(tmp_path, backend: Backend, caplog):
    [run_id] = queued(tmp_path, backend.direct_url, 1)
    client, _ = serve_backend(tmp_path, backend)
    client = no_redirects(client)
    for path in outage_pages(run_id):
        assert client.get(path, headers=JSON_HEADERS).status_code in (200, 404), path
    backend.cut()
    try:
        with caplog.at_level(logging.INFO):
            for path in outage_pages(run_id):
                assert_unavailable(client, path, within=5)
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    finally:
        backend.restore()


@pytest.mark.postgres
def test_every_page_answers_503_within_seconds_while_the_database_stalls(tmp_path, postgres_url):
    backend = _proxied(tmp_path, postgres_url)
    [run_id] = queued(tmp_path, backend.direct_url, 1)
    client, _ = serve_backend(tmp_path, backend, db_timeout=1.0)
    client = no_redirects(client)
    assert backend.proxy is not None
    backend.proxy.stall()
    try:
        for path in outage_pages(run_id):
            assert_unavailable(client, path, within=10)
    finally:
        backend.proxy.close()


# Over a real socket ---------------------------------------------------------------------------


@contextlib.contextmanager
def uvicorn_serving(client: TestClient, http: str) -> Iterator[int]:
    """The client's app under uvicorn on 127.0.0.1 (its port), with the HTTP parser `http`."""
    with serving_app(client.app, http=http, log_config=None) as port:
        yield port


def raw_get(port: int, target: bytes) -> tuple[int, dict[str, str], bytes]:
    """GET `target` exactly as given (no client quotes it): status, headers, body. A server
    that refuses a request while it is still being sent may reset the connection before its
    400 is read: that is status 0."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        try:
            connection.sendall(
                b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Accept: application/json\r\nConnection: close\r\n\r\n"
            )
            while chunk := connection.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_raw_bytes_and_bare_percent_signs_over_a_socket_are_never_a_500(
    tmp_path, database_url, http, caplog
):
    """A raw NUL, a raw 0xff and a 100 KB URL are refused by the server's parser (its own
    400) or by the page (the JSON error); a bare % is only text; an escaped NUL never reaches
    Postgres. Nothing is logged as an error."""
    wf = make(tmp_path, database_url)
    run_id = wf.run(text="email").run_id
    client, _ = serve([wf])
    answers: dict[bytes, tuple[int, dict[str, str], bytes]] = {}
    big = b"x" * 100_000
    targets = [
        b"/?workflow=\x00",
        b"/items/\x00",
        b"/runs?q=a\x00b",
        b"/?workflow=\xff",
        b"/%",
        b"/%%",
        b"/?q=%",
        b"/?workflow=%",
        b"/items/%",
        b"/runs?q=%",
        b"/runs/%",
        b"/workflows/%",
        b"/evals/%",
        b"/evals?workflow=%",
        b"/?workflow=%00",
        b"/items/%00",
        b"/items/" + run_id.encode() + b"%00",
        b"/runs?workflow=%00",
        b"/?workflow=" + big,
        b"/workflows/" + big,
    ]
    with caplog.at_level(logging.INFO), uvicorn_serving(client, http) as port:
        for target in targets:
            answers[target] = raw_get(port, target)
    for target, (status, headers, body) in answers.items():
        shown = target[:40]
        refused = (0, 400) if big in target else ()  # cut off while still being sent
        assert status in (200, 400, 404, *refused), (shown, status, body[:200])
        if headers.get("content-type", "").startswith("application/json") and status >= 400:
            error = json.loads(body)
            assert set(error) == {"error", "hint"} and len(error["error"]) <= 400, shown
    assert answers[b"/?workflow=\x00"][0] == 400  # the parser's own refusal
    assert answers[b"/?workflow=%"][0] == 200 and answers[b"/runs?q=%"][0] == 200
    assert answers[b"/items/%"][0] == 404
    assert json.loads(answers[b"/?workflow=%00"][2])["error"] == "?workflow= holds a NUL character"
    assert answers[b"/items/%00"][0] == 404
    # by the parser (httptools), or by the page (h11) unless it hung up while it was sent
    assert answers[b"/?workflow=" + big][0] in (0, 400)
    logged = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not logged, [r.getMessage() for r in logged]
    assert client.get("/", headers=JSON_HEADERS).json()["counts"] == {"triage": 1}


def test_the_check_is_on_what_a_page_reads_not_on_the_whole_address(site):
    """A parameter no page reads is never looked at: a tracking tag with a NUL does no harm."""
    client = site["client"]
    assert client.get("/dashboard?since=%00&x=%ff").status_code == 200
    assert client.get("/runs?utm=%00", headers=JSON_HEADERS).status_code == 200
    assert client.get("/?x=" + "y" * 5000, headers=JSON_HEADERS).status_code == 200
    yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()
    assert client.get(f"/runs?since={yesterday}", headers=JSON_HEADERS).status_code == 200


def asgi_get(app: Any, path: str, query: bytes) -> tuple[int, dict[str, Any]]:
    """A GET straight to the ASGI app, with a query string of any size and any bytes (what
    another server, or a proxy, might hand it): status and JSON body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"accept", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_values_of_100_kb_and_raw_bytes_are_one_line_400s(site):
    """What uvicorn's parser refuses before the app sees it, another server may pass on."""
    app, big = site["client"].app, b"x" * 100_000
    for path, query, said in [
        ("/", b"workflow=" + big, "?workflow= is 100,000 characters long"),
        ("/", b"state=" + big, "?state= is 100,000 characters long"),
        ("/runs", b"q=" + big, "?q= is 100,000 characters long"),
        ("/evals", b"workflow=" + big, "?workflow= is 100,000 characters long"),
        ("/", b"workflow=\x00", "?workflow= holds a NUL character"),
        ("/runs", b"workflow=a\x00b", "?workflow= holds a NUL character"),
    ]:
        status, body = asgi_get(app, path, query)
        assert status == 400 and body["error"].startswith(said), (path, body)
        assert len(body["error"]) < 100
    for query in (b"workflow=\xff\xfe", b"workflow=\xed\xa0\x80", b"q=%"):
        status, _ = asgi_get(app, "/", query)
        assert status == 200, query  # undecodable bytes are read as U+FFFD: plain text
