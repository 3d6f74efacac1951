"""The runs browser and the run page, on SQLite and Postgres: each filter, keyset pages that
visit every run once (ties in start time included), a text search that is literal, ignores case
and stops at its bound with a cursor to go on, and the web pages' JSON, 400s and 404s."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from smallops import FakeProvider, Settings, Workflow
from smallops.dashboards.runs import run_record
from smallops.ids import uuid7
from smallops.review.desk import ReviewDesk
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.run_browser import RunFilters, browse_runs
from smallops.storage.schema import runs

from models import GOOD, Triage

pytest.importorskip("starlette", reason="the web extra is not installed")
from starlette.testclient import TestClient

from smallops.web.app import create_app

NOW = datetime.now(timezone.utc).replace(microsecond=0)
JSON = {"Accept": "application/json"}


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Engine:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return engine


def add_run(engine: Engine, **values: Any) -> str:
    row: dict[str, Any] = {
        "id": uuid7(),
        "workflow": "triage",
        "prompt_version": "v1",
        "provider": "openai",
        "model_requested": "gpt-4o-mini",
        "model_mismatch": False,
        "allow_unpinned": False,
        "status": "auto",
        "review_policy": "none",
        "fallback": "review",
        "attempt_count": 1,
        "input_tokens": 10,
        "output_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost_source": "table",
        "latency_ms": 12.0,
        "started_at": NOW,
        "finished_at": NOW,
        "inputs": {"text": "hi"},
        "origin": "app",
        "attempts": [],
        **values,
    }
    with engine.begin() as connection:
        connection.execute(runs.insert().values(**row))
    return str(row["id"])


def ids(engine: Engine, **filters: Any) -> set[str]:
    return {run["id"] for run in browse_runs(engine, RunFilters(**filters), limit=200).runs}


def test_each_filter_narrows_the_runs(engine):
    plain = add_run(engine)
    other = add_run(engine, workflow="refund-check")
    failed = add_run(engine, status="failed", error_type="timeout")
    evaluated = add_run(engine, origin="eval")
    fallback = add_run(engine, origin="fallback")
    v2 = add_run(engine, prompt_version="v2")
    old = add_run(engine, started_at=NOW - timedelta(days=10))
    production = {plain, other, failed, fallback, v2, old}
    assert ids(engine) == production
    assert ids(engine, origin="all") == production | {evaluated}
    assert ids(engine, origin="eval") == {evaluated}
    assert ids(engine, workflow="refund-check") == {other}
    assert ids(engine, workflow="refund_check") == {other}  # - and _ alike, as `logs` takes it
    assert ids(engine, status="failed") == {failed}
    assert ids(engine, error_type="timeout") == {failed}
    assert ids(engine, prompt_version="v2") == {v2}
    assert ids(engine, since=NOW - timedelta(days=1)) == production - {old}
    assert ids(engine, until=NOW - timedelta(days=1)) == {old}
    assert ids(engine, workflow="triage", status="auto", since=NOW - timedelta(days=1)) == {
        plain,
        fallback,
        v2,
    }


def test_keyset_pages_visit_every_run_once_newest_first_even_when_runs_share_a_start(engine):
    made = []
    for i in range(23):
        started = NOW - timedelta(seconds=i // 4)  # runs of four share each start time
        made.append((started, add_run(engine, started_at=started)))
    expected = [run_id for _, run_id in sorted(made, reverse=True)]
    seen: list[str] = []
    after = None
    while True:
        page = browse_runs(engine, RunFilters(), after=after, limit=5)
        seen += [run["id"] for run in page.runs]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == expected
    add_run(engine, started_at=NOW + timedelta(seconds=1))  # a new run does not shift pages
    again = browse_runs(engine, RunFilters(), after=expected[4], limit=5)
    assert [run["id"] for run in again.runs] == expected[5:10]


def test_search_finds_text_in_inputs_and_outputs_literally_and_ignoring_case(engine):
    school = add_run(engine, inputs={"subject": "L'école est fermée", "body": "x"})
    answer = add_run(engine, inputs={"text": "hi"}, output={"summary": "Refund APPROVED"})
    percent = add_run(engine, inputs={"text": "a 50% discount"})
    five_hundred = add_run(engine, inputs={"text": "a 500 discount"})
    underscore = add_run(engine, inputs={"text": "order_id 7"})
    orderxid = add_run(engine, inputs={"text": "orderXid 7"})
    quoted = add_run(engine, inputs={"text": 'she said "yes"\nthen left'})
    backslash = add_run(engine, inputs={"text": "C:\\temp"})
    assert ids(engine, q="ÉCOLE") == {school}
    assert ids(engine, q="approved") == {answer}
    assert ids(engine, q="50%") == {percent}
    assert five_hundred not in ids(engine, q="50%")
    assert ids(engine, q="order_id") == {underscore}
    assert orderxid not in ids(engine, q="r_i")
    assert ids(engine, q='said "yes"') == {quoted}
    assert ids(engine, q="C:\\temp") == {backslash}
    assert ids(engine, q="nowhere to be found") == set()


def test_a_bounded_search_says_how_far_it_got_and_its_cursor_goes_on(engine):
    needle = add_run(engine, started_at=NOW - timedelta(hours=5), inputs={"text": "needle"})
    for i in range(12):
        add_run(engine, started_at=NOW - timedelta(minutes=i))
    filters = RunFilters(q="needle")
    first = browse_runs(engine, filters, scan=10)
    assert first.runs == [] and first.examined == 10
    assert first.searched_to is not None and first.next_after is not None
    assert first.searched_to <= NOW - timedelta(minutes=9)
    rest = browse_runs(engine, filters, after=first.next_after, scan=10)
    assert [run["id"] for run in rest.runs] == [needle]
    assert rest.next_after is None and rest.searched_to is None


def test_a_metadata_only_run_has_nothing_to_search_and_previews_say_not_kept(engine, tmp_path):
    from smallops.dashboards.runs import browse, parse_query

    add_run(engine, content="metadata", inputs={}, output={"category": "billing"})
    assert ids(engine, q="hi") == set()
    data = browse(engine, parse_query({}), lambda _: None, [])
    (row,) = data["runs"]
    assert row["content"] == "metadata" and row["input_preview"] == ""


def test_until_a_bare_date_takes_in_that_whole_day():
    from smallops.dashboards.runs import moment

    assert moment("2026-11-30", "until", end_of_day=True) == datetime(
        2026, 12, 1, tzinfo=timezone.utc
    )
    assert moment("2026-11-30", "since") == datetime(2026, 11, 30, tzinfo=timezone.utc)
    assert moment("2026-11-30T12:00+02:00", "since") == datetime(
        2026, 11, 30, 10, tzinfo=timezone.utc
    )


def test_next_urls_walk_a_filtered_log_through_the_web(client):
    http, wf = client
    for i in range(6):
        wf.run(text=f"more mail {i}")
    wf.plan().writer.flush()
    seen: list[str] = []
    url: str | None = "/runs?workflow=triage&limit=4&q=mail"
    while url:
        data = http.get(url, headers=JSON).json()
        seen += [run["id"] for run in data["runs"]]
        url = data["next_url"]
    assert len(seen) == len(set(seen)) == 6


def test_a_cursor_that_names_no_run_is_refused(engine):
    from smallops.errors import InputError

    add_run(engine)
    with pytest.raises(InputError):
        browse_runs(engine, RunFilters(), after=uuid7())


# The web pages.


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> tuple[TestClient, Workflow]:
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
        review="always",
        settings=Settings(root=tmp_path, database_url=database_url),
    )
    wf.run(text="Où est ma facture de mai ?")
    wf.plan().writer.flush()
    engine = wf.plan().writer.store.engine
    desk = ReviewDesk(engine, {wf.name: wf})
    app = create_app(desk, Settings(root=tmp_path), require_login=False, reviewer="ann", env={})
    return TestClient(app, base_url="http://127.0.0.1"), wf


def test_the_runs_page_answers_json_and_html_and_links_each_run(client):
    http, _ = client
    data = http.get("/runs", headers=JSON).json()
    assert set(data) >= {"runs", "filters", "next_after", "searched_to", "choices"}
    (run,) = data["runs"]
    assert run["workflow"] == "triage" and run["input_preview"].startswith("Où est")
    assert run["cost_usd"] is None  # the fake model has no price: unpriced, never $0
    page = http.get("/runs?q=FACTURE")
    assert page.status_code == 200 and f'href="/runs/{run["id"]}"' in page.text
    assert "unpriced" in page.text
    assert http.get("/runs?q=nothing-like-it", headers=JSON).json()["runs"] == []


@pytest.mark.parametrize(
    "query",
    [
        "status=bogus",
        "error_type=oops",
        "origin=staging",
        "since=yesterday",
        "until=2026-13-45",
        "since=99999999999d",
        "after=not-a-run-id",
        f"after={'0' * 8}-0000-7000-8000-{'0' * 12}",
        "q=%00",
        "workflow=a%00b",
        "limit=0",
        "limit=lots",
        "q=" + "x" * 10_000,
    ],
)
def test_bad_filters_are_a_400_in_html_and_json(client, query):
    http, _ = client
    page = http.get(f"/runs?{query}")
    assert page.status_code == 400 and "That could not be done" in page.text
    answer = http.get(f"/runs?{query}", headers=JSON)
    assert answer.status_code == 400 and answer.json()["error"]


def test_odd_unicode_in_a_search_is_only_text(client):
    http, _ = client
    for q in ["\U0001f600", "\u202e\u0301", "%ED%A0%80", "'; DROP TABLE runs; --", "\\", "%_%"]:
        answer = http.get("/runs", params={"q": q}, headers=JSON)
        assert answer.status_code == 200, q


def test_the_run_page_is_show_json_and_links_its_review_item(client):
    http, wf = client
    run_id = http.get("/runs", headers=JSON).json()["runs"][0]["id"]
    record = http.get(f"/runs/{run_id}", headers=JSON).json()
    expected = run_record(wf.plan().writer.store.engine, run_id, lambda _: Triage)
    assert record["id"] == run_id and record["review"]["state"] == "pending"
    assert set(record) == set(expected) and record["inputs"] == expected["inputs"]
    assert list(record["output"]) == list(Triage.model_fields)
    by_short_id = http.get(f"/runs/{run_id[-12:]}", headers=JSON).json()
    assert by_short_id["id"] == run_id
    page = http.get(f"/runs/{run_id}")
    assert page.status_code == 200 and f'href="/items/{run_id}"' in page.text
    assert "Attempts" in page.text and "Rendered messages" in page.text
    queue = http.get("/").text
    assert f'href="/runs/{run_id}"' in queue
    assert f'href="/runs/{run_id}"' in http.get(f"/items/{run_id}").text


@pytest.mark.parametrize("given", [uuid7(), "0123456789ab", "zz%00zz-not-an-id", "x" * 300])
def test_an_unknown_run_is_a_404_page_with_a_hint(client, given):
    http, _ = client
    page = http.get(f"/runs/{given}")
    assert page.status_code == 404 and "Not found" in page.text
    answer = http.get(f"/runs/{given}", headers=JSON)
    assert answer.status_code == 404 and answer.json()["hint"]
