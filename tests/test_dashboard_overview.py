"""The Overview (/dashboard) and the workflow pages (/workflows/{name}): figures from the rollups
on SQLite and Postgres, the same dict as HTML and JSON, ranges, 400s and 404s, hostile names,
unpriced calls; and both pages in a real Chromium at desktop and phone width."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from smallops import Budget
from smallops.dashboards.overview import overview
from smallops.dashboards.ranges import parse_range
from smallops.dashboards.workflow import workflow_figures
from smallops.errors import InputError, NotFoundError
from smallops.ids import uuid7
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.schema import RUN_COLUMNS
from smallops.storage.store import RowBatch, RowStore, land

from models import GOOD

pytest.importorskip("starlette", reason="the web extra is not installed")

from test_web import JSON_HEADERS, make, serve

from live_server import serving_app

PINNED = "gpt-4o-mini-2024-07-18"
UPGRADED = "gpt-4o-mini-2024-09-30"
SECONDARY = "claude-sonnet-4-6"
NOW = datetime(2026, 12, 1, 10, 30, tzinfo=timezone.utc)
HOSTILE = '<script>alert("x")</script> & "quoted" \u202e'


def run_row(
    workflow: str,
    started: datetime,
    *,
    status: str = "auto",
    error: str | None = None,
    origin: str | None = "app",
    cost: float | None = 0.001,
    served: str | None = PINNED,
    requested: str = PINNED,
    version: str = "v1",
    latency: float = 100.0,
) -> tuple[Any, ...]:
    """A `runs` row as the log writer lands it (RUN_COLUMNS order, epoch-second times)."""
    values: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    at = started.timestamp()
    values.update(
        id=uuid7(),
        workflow=workflow,
        prompt_version=version,
        provider="openai",
        model_requested=requested,
        model_served=served,
        model_mismatch=served is not None and served != requested,
        allow_unpinned=False,
        status=status,
        error_type=error,
        review_policy="none",
        origin=origin,
        fallback="review",
        attempt_count=1,
        input_tokens=100,
        output_tokens=10,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_usd=cost,
        cost_source="table",
        latency_ms=latency,
        started_at=at,
        finished_at=at + latency / 1000,
        inputs="{}",
        attempts="[]",
    )
    return tuple(values[name] for name in RUN_COLUMNS)


def write(engine: Any, rows: list[tuple[Any, ...]]) -> None:
    store = RowStore(engine)
    land(store, RowBatch(runs=rows), lambda _batch, _why: None)
    store.close()


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Any:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return engine


def seed(engine: Any) -> None:
    """triage: this week 10 app calls (1 refused by the model, 1 throttled, 1 handed to a
    human, 1 unpriced, 1 served by the upgraded model), 2 on the secondary model and 5 eval
    calls; the four weeks before, 8 calls; a call 40 days ago (outside). quiet: unpriced only."""
    rows = []
    week = NOW - timedelta(days=1)
    rows += [run_row("triage", week + timedelta(minutes=i), latency=100 + i) for i in range(5)]
    rows.append(run_row("triage", week, status="failed", error="refused", served=None))
    rows.append(run_row("triage", week, status="queued_for_human", error="throttled", cost=0))
    rows.append(
        run_row("triage", week, status="fallback_secondary", error="server_error", served=None)
    )
    rows.append(run_row("triage", week, cost=None))
    rows.append(run_row("triage", week, served=UPGRADED, version="v2", latency=1000))
    rows += [
        run_row("triage", week, origin="fallback", served=SECONDARY, requested=SECONDARY)
        for _ in range(2)
    ]
    rows += [run_row("triage", week, origin="eval", cost=1.0) for _ in range(5)]
    rows += [run_row("triage", NOW - timedelta(days=10 + i), cost=0.002) for i in range(8)]
    rows.append(run_row("triage", NOW - timedelta(days=40)))
    rows += [run_row("quiet", week, cost=None) for _ in range(3)]
    write(engine, rows)


def test_overview_figures_from_the_rollups(engine):
    seed(engine)
    data = overview(engine, {}, now=NOW)
    rows = {row["workflow"]: row for row in data["workflows"]}
    assert list(rows) == ["quiet", "triage"]
    triage = rows["triage"]
    week = triage["week"]
    assert week["calls"] == 12  # 10 app calls and 2 on the secondary model; no eval calls
    assert week["unpriced_calls"] == 1 and week["priced_calls"] == 11
    assert week["cost_usd"] == pytest.approx(0.010)  # 10 priced at $0.001, one at $0
    assert week["pinned_route_calls"] == 10
    assert week["errors"] == 3 and week["error_rate"] == 0.3
    assert week["refusals"] == 1 and week["refusal_rate"] == 0.1
    assert week["guard_refusals"] == 1
    assert week["fallbacks"] == 2 and week["fallback_rate"] == 0.2
    assert week["model_mismatches"] == 1
    assert week["models_served"] == {PINNED: 7, UPGRADED: 1}
    assert 90 < week["latency_p50_ms"] < 110 and week["latency_p95_ms"] > 100
    mean = triage["before_weekly_mean"]
    assert mean["calls"] == 2 and mean["cost_usd"] == pytest.approx(0.004)
    assert triage["change"]["calls"] == 5.0  # 12 against 2 a week
    assert len(triage["days"]) == 35 and triage["days"][-1]["day"] == "2026-12-01"
    assert sum(day["calls"] for day in triage["days"]) == 12 + 8
    quiet = rows["quiet"]["week"]
    assert quiet["calls"] == 3 and quiet["cost_usd"] is None and quiet["unpriced_calls"] == 3
    day = rows["quiet"]["days"][-2]
    assert day["calls"] == 3 and day["cost_usd"] is None  # unpriced is never $0
    assert rows["quiet"]["days"][0]["cost_usd"] == 0.0  # no calls: nothing spent
    assert rows["quiet"]["change"] == {"calls": None, "cost_usd": None}


def test_workflow_figures_by_day_version_and_model(engine):
    seed(engine)
    period = parse_range("30d", None, NOW)
    data = workflow_figures(engine, "triage", {}, period, now=NOW)
    assert data["figures"]["calls"] == 20 and data["range"]["days"] == 30
    versions = {row["prompt_version"]: row for row in data["prompt_versions"]}
    assert versions["v1"]["calls"] == 19 and versions["v2"]["calls"] == 1
    assert versions["v2"]["latency_p50_ms"] == pytest.approx(1000, rel=0.05)
    models = {row["model"]: row for row in data["models"]}
    assert models[PINNED]["calls"] == 15 and models[SECONDARY]["calls"] == 2
    assert models["(no answer)"]["calls"] == 2 and models["(no answer)"]["error_rate"] == 1.0
    assert models[SECONDARY]["error_rate"] is None  # no calls to the pinned route
    assert [d["day"] for d in data["days"]][-1] == "2026-12-01"
    assert sum(d["calls"] for d in data["days"]) == 20
    week = workflow_figures(engine, "triage", {}, parse_range("7d", None, NOW), now=NOW)
    assert week["figures"]["calls"] == 12
    with pytest.raises(NotFoundError):
        workflow_figures(engine, "nobody", {}, period, now=NOW)
    with pytest.raises(NotFoundError):
        workflow_figures(engine, "tri\x00age", {}, period, now=NOW)


def test_histograms_add_up_as_the_report_adds_them(engine):
    """Per workflow and in detail (day, version, model), the same buckets as `report` reads."""
    from smallops.storage import dashboard_figures
    from smallops.storage.rollup_reads import production

    seed(engine)
    since, until = NOW - timedelta(days=20), NOW + timedelta(hours=1)
    expected = {name: p.totals.histogram for name, p in production(engine, since).items()}
    found = dashboard_figures.histograms(engine, since, until)
    assert {key[0]: dict(h) for key, h in found.items()} == {
        name: dict(h) for name, h in expected.items() if h
    }
    detail = dashboard_figures.histograms(engine, since, until, workflow="triage", detail=True)
    total: dict[int, int] = {}
    for (name, day, version, _model), histogram in detail.items():
        assert name == "triage" and day.startswith("2026-1") and version in ("v1", "v2")
        for bucket, n in histogram.items():
            total[bucket] = total.get(bucket, 0) + n
    assert total == dict(expected["triage"])


def test_the_figures_read_the_rollups_and_never_the_runs(tmp_path, database_url):
    """What keeps the pages fast over a million runs: no statement reads the runs table."""
    from sqlalchemy import event

    wf = make(tmp_path, database_url, budget=Budget(daily=5.0, monthly=50.0))
    wf.run(text="email")  # opens the budget's periods, as any call does
    client, desk = serve([wf])
    write(desk.engine, [run_row("triage", NOW - timedelta(days=3))])
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(desk.engine, "before_cursor_execute", seen)
    try:
        assert client.get("/dashboard").status_code == 200
        assert client.get("/workflows/triage?since=90d").status_code == 200
    finally:
        event.remove(desk.engine, "before_cursor_execute", seen)
    assert any("run_rollups" in sql for sql in statements)
    assert any("budget_spend" in sql for sql in statements)  # the guards were read too
    reads_runs = [sql for sql in statements if re.search(r"\bFROM runs\b|\bJOIN runs\b", sql)]
    assert reads_runs == []


@pytest.mark.parametrize(
    ("since", "until", "first", "end"),
    [
        ("7d", None, "2026-11-25 00:00", "2026-12-01 11:00"),
        ("2w", None, "2026-11-18 00:00", "2026-12-01 11:00"),
        ("24h", None, "2026-11-30 11:00", "2026-12-01 11:00"),
        ("2026-11-01", "2026-11-30", "2026-11-01 00:00", "2026-12-01 00:00"),
        ("2026-11-01T09:30", "2026-11-02T10:15+01:00", "2026-11-01 09:00", "2026-11-02 10:00"),
    ],
)
def test_ranges_are_whole_hours(since, until, first, end):
    period = parse_range(since, until, NOW)
    assert f"{period.since:%Y-%m-%d %H:%M}" == first and f"{period.until:%Y-%m-%d %H:%M}" == end


@pytest.mark.parametrize(
    ("since", "until"),
    [
        ("abc", None),
        ("7x", None),
        ("\x00", None),
        ("7d\x00", None),
        ("9" * 5000, None),
        ("999999d", None),
        ("0d", None),
        ("2026-11-30", "2026-11-01"),
        ("400d", None),
        ("0001-01-01", None),
        ("2026-11-01", "9999-12-31"),
        ("2026-13-01", None),
    ],
)
def test_a_range_it_cannot_read_is_an_input_error(since, until):
    with pytest.raises(InputError):
        parse_range(since, until, NOW)


# --- the pages -----------------------------------------------------------------------------


def test_the_pages_answer_html_and_the_same_data_as_json(tmp_path, database_url):
    wf = make(tmp_path, database_url, budget=Budget(daily=5.0))
    ids = [wf.run(text=f"email {i}").run_id for i in range(3)]
    client, desk = serve([wf])
    desk.approve(ids[0], "ann")
    desk.correct(ids[1], "ann", {**GOOD, "category": "sales"})
    data = client.get("/dashboard", headers=JSON_HEADERS).json()
    [row] = data["workflows"]
    assert row["workflow"] == "triage" and row["defined"] and row["week"]["calls"] == 3
    assert row["review"]["pending"] == 1 and row["review"]["oldest_age"] is not None
    assert row["review"]["last_7_days"]["approval_rate"] == 0.5
    assert row["review"]["last_7_days"]["correction_rate"] == 0.5
    guards = row["guards"]
    assert guards["budget"][0]["period"].startswith("day") and guards["budget"][0]["cap_usd"] == 5
    assert guards["breaker"]["source"] == "process" and "own" in guards["breaker"]["source_text"]
    assert len(row["days"]) == 35
    html = client.get("/dashboard").text
    assert '<svg class="chart"' in html and "calls / day" in html and "USD / day" in html
    assert 'href="/workflows/triage"' in html and "Show the numbers" in html
    assert 'aria-current="page">Overview' in html.replace('class="current" ', "")
    page = client.get("/workflows/triage?since=7d", headers=JSON_HEADERS).json()
    assert page["figures"]["calls"] == 3 and page["range"]["days"] == 7
    assert page["review"]["in_range"]["decided"] == 2
    assert [row["prompt_version"] for row in page["prompt_versions"]] == [wf.version.id]
    html = client.get("/workflows/triage?since=7d").text
    assert "By prompt version" in html and "latency, ms" in html and wf.version.id in html


def redis_workflow(tmp_path: Path, redis_url: str) -> Any:
    from smallops import FakeProvider, Settings, Workflow

    (tmp_path / "triage.prompt").write_text("[user]\n{{ text }}")
    settings = Settings(
        root=tmp_path, database_url=f"sqlite:///{tmp_path / 'log.db'}", redis_url=redis_url
    )
    return Workflow(
        "triage",
        model="fake:rules",
        prompt="triage.prompt",
        provider=FakeProvider(lambda _request: GOOD),
        base_dir=tmp_path,
        fallback="review",
        settings=settings,
    )


def test_a_breaker_shared_through_redis_is_shown_as_shared(tmp_path):
    redis = pytest.importorskip("redis")
    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as error:
        pytest.skip(f"no Redis server reachable at 127.0.0.1:6379 ({error})")
    client, _ = serve([redis_workflow(tmp_path, url)])
    [row] = client.get("/dashboard", headers=JSON_HEADERS).json()["workflows"]
    breaker = row["guards"]["breaker"]
    assert breaker["source"] == "shared" and "every process" in breaker["source_text"]


def test_a_breaker_whose_redis_is_down_says_the_shared_state_is_unknown(tmp_path):
    pytest.importorskip("redis")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client, _ = serve([redis_workflow(tmp_path, f"redis://127.0.0.1:{port}/0")])
    [row] = client.get("/dashboard", headers=JSON_HEADERS).json()["workflows"]
    breaker = row["guards"]["breaker"]
    assert breaker["source"] == "fallback" and "unknown" in breaker["source_text"]
    assert row["guards"]["degraded"]
    assert "the shared state is unknown" in client.get("/dashboard").text


def test_bad_ranges_are_400_pages_and_unknown_workflows_404(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    wf.run(text="email")
    client, _ = serve([wf])
    for query in ("since=abc", "since=%00", "until=2026-99-01", "since=" + "9" * 3000):
        answer = client.get(f"/workflows/triage?{query}")
        assert answer.status_code == 400 and "error-page" in answer.text
        answer = client.get(f"/workflows/triage?{query}", headers=JSON_HEADERS)
        assert answer.status_code == 400 and "not a duration or a date" in answer.json()["error"]
    for name in ("nobody", "tri%00age", quote("x" * 5000)):
        answer = client.get(f"/workflows/{name}")
        assert answer.status_code == 404 and "error-page" in answer.text
        assert client.get(f"/workflows/{name}", headers=JSON_HEADERS).status_code == 404
    assert client.get("/dashboard?since=%00&x=%ff").status_code == 200


def test_hostile_workflow_names_from_the_log_are_escaped_and_linked(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    client, desk = serve([wf])
    write(desk.engine, [run_row(HOSTILE, datetime.now(timezone.utc), cost=None)])
    html = client.get("/dashboard").text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    link = "/workflows/" + quote(HOSTILE, safe="")
    assert f'href="{link}"' in html.replace("&amp;", "&") or link.replace("&", "&amp;") in html
    page = client.get(link)
    assert page.status_code == 200 and "<script>alert" not in page.text
    data = client.get(link, headers=JSON_HEADERS).json()
    assert data["workflow"] == HOSTILE and data["figures"]["unpriced_calls"] == 1
    assert data["figures"]["cost_usd"] is None
    assert "1 unpriced" in page.text


def test_a_workflow_with_no_runs(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    client, _ = serve([wf])
    [row] = client.get("/dashboard", headers=JSON_HEADERS).json()["workflows"]
    assert row["workflow"] == "triage" and row["week"]["calls"] == 0
    assert row["week"]["cost_usd"] == 0.0 and row["week"]["error_rate"] is None
    assert row["change"] == {"calls": None, "cost_usd": None}
    assert client.get("/dashboard").status_code == 200
    page = client.get("/workflows/triage", headers=JSON_HEADERS).json()
    assert page["figures"]["calls"] == 0 and page["models"] == []
    assert "No calls in this range." in client.get("/workflows/triage").text


def test_unpriced_calls_are_counted_and_never_shown_as_zero_dollars(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    client, desk = serve([wf])
    now = datetime.now(timezone.utc)
    write(desk.engine, [run_row("free", now, cost=None) for _ in range(4)])
    found = client.get("/dashboard", headers=JSON_HEADERS).json()["workflows"]
    free = {row["workflow"]: row for row in found}["free"]
    assert free["week"]["cost_usd"] is None and free["week"]["unpriced_calls"] == 4
    assert free["days"][-1]["cost_usd"] is None and free["days"][-1]["unpriced_calls"] == 4
    html = client.get("/workflows/free?since=1d").text
    assert "4 unpriced" in html and 'class="chart-unknown"' in html
    table = re.search(r"<tbody>(.*?)</tbody>", html, re.S)
    assert table and "$0<" not in table.group(1)


# --- in a browser --------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def serving_dashboards(tmp_path: Path) -> Iterator[str]:
    """Two workflows with five weeks of calls, one item waiting, under uvicorn."""
    pytest.importorskip("uvicorn")
    from smallops.review.desk import ReviewDesk
    from smallops.web.app import create_app

    database_url = f"sqlite:///{tmp_path / 'log.db'}"
    wf = make(tmp_path, database_url, name="email-triage", budget=Budget(daily=2.0))
    wf.run(text="email")
    wf.plan().writer.flush()
    engine = wf.plan().writer.store.engine
    now = datetime.now(timezone.utc)
    rows = []
    for day in range(35):
        for i in range(20 + (day * 7) % 13):
            started = now - timedelta(days=day, minutes=i * 7)
            error = "server_error" if i % 17 == 0 else None
            rows.append(
                run_row(
                    "email-triage",
                    started,
                    status="queued_for_human" if error else "auto",
                    error=error,
                    cost=None if i % 23 == 0 else 0.0004 * (1 + i % 4),
                    version="v1" if day > 12 else wf.version.id,
                    served=UPGRADED if day < 5 and i % 3 == 0 else PINNED,
                    latency=300 + 40 * (i % 9) + 5 * day,
                )
            )
            if i % 3 == 0:
                rows.append(run_row("refund-check", started, cost=0.002, latency=800 + 10 * i))
    write(engine, rows)
    _fire_alert(engine, now)
    app = create_app(
        ReviewDesk(engine, {wf.name: wf}),
        wf.settings,
        require_login=False,
        reviewer="dana",
        secret_key=b"test-secret-key",
        env={},
    )
    with serving_app(app) as port:
        yield f"http://127.0.0.1:{port}"


def _fire_alert(engine: Any, now: datetime) -> None:
    """One open alert, as `smallops alerts check` would leave it, for the overview to list."""
    from smallops.alert_config import AlertSettings
    from smallops.alerts.engine import apply
    from smallops.alerts.model import Finding

    class Found:
        findings = [
            Finding(
                rule="model_mismatch",
                workflow="email-triage",
                firing=True,
                period=UPGRADED,
                summary=f"email-triage: 31 calls in 24 h answered by {UPGRADED}, not {PINNED}",
                figures={"calls": 31},
            )
        ]
        checked: set[tuple[str, str]] = set()
        problems: list[str] = []

    apply(engine, Found(), AlertSettings(), {}, now)  # type: ignore[arg-type]


def test_the_overview_and_a_workflow_page_in_chromium_at_desktop_and_phone_width(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from playwright.sync_api import sync_playwright

    from test_web_browser import ARGS, ARTIFACTS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serving_dashboards(tmp_path) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            for name, path in (("overview", "/dashboard"), ("workflow", "/workflows/email-triage")):
                for size, width in (("desktop", 1280), ("phone", 390)):
                    page = browser.new_page(viewport={"width": width, "height": 900})
                    page.set_default_timeout(10_000)
                    page.goto(base + path)
                    assert page.locator("svg.chart").count() >= 2
                    assert page.locator(".sections a.current").inner_text() == "Overview"
                    overflow = page.evaluate(
                        "document.documentElement.scrollWidth - window.innerWidth"
                    )
                    assert overflow <= 0, f"{path} is {overflow} px wider than {width} px"
                    chart = page.locator("svg.chart").first.bounding_box()
                    assert chart is not None and chart["width"] >= min(300, width - 60)
                    # styled at every width: the figures in a grid, chart text at its own size
                    assert page.locator("dl.kpis").first.evaluate(
                        "e => getComputedStyle(e).display"
                    ) == ("grid")
                    size_px = page.locator(".chart-tick").first.evaluate(
                        "e => getComputedStyle(e).fontSize"
                    )
                    assert 11 <= float(size_px[:-2]) <= 14, f"chart text is {size_px} at {width}"
                    page.locator("details.numbers summary").first.click()
                    assert page.locator("table.figures").first.is_visible()
                    page.locator("details.numbers summary").first.click()
                    page.screenshot(path=str(ARTIFACTS / f"{name}-{size}.png"), full_page=True)
                    page.close()
            page = browser.new_page(viewport={"width": 390, "height": 900})
            page.goto(base + "/dashboard")
            assert "answered by" in page.locator("#alerts .alert").first.inner_text()
            page.click("#alerts button:has-text('Acknowledge')")
            page.wait_for_url(base + "/dashboard#alerts")
            assert "acknowledged by dana" in page.locator("#alerts .alert").first.inner_text()
            page.click("a:has-text('email-triage')")
            page.wait_for_url(base + "/workflows/email-triage")
            page.click("a:has-text('90d')")
            page.wait_for_url(base + "/workflows/email-triage?since=90d")
            page.fill("input[name=since]", "nonsense")
            page.click("button:has-text('Show')")
            assert "not a duration or a date" in page.locator(".error-page").inner_text()
        finally:
            browser.close()
