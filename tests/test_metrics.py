"""/metrics for Prometheus, on SQLite and Postgres: served over real HTTP with the review token
and on the loopback port, parsed with prometheus_client's own parser, every value checked
against SQL over the `runs` table; refused without credentials; hostile workflow names escaped;
eval traffic left out; promtool's lint (when Debian's prometheus package is here); and the
starter Grafana dashboard refers only to metrics /metrics exposes."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from smallops import Budget
from smallops.config import Settings
from smallops.dashboards.metrics import DURATION_EDGES_MS, OTHER_MODEL, MetricFigures
from smallops.ids import uuid7
from smallops.review.desk import ReviewDesk
from smallops.storage import alert_log
from smallops.storage.db import ensure_schema, get_engine, normalise_url

pytest.importorskip("prometheus_client", reason="the web extra is not installed")
from prometheus_client.parser import text_string_to_metric_families

from smallops.cli.serve import serve_metrics
from smallops.web import auth
from smallops.web.app import create_app
from smallops.web.prometheus import families
from test_dashboard_overview import run_row as overview_run_row

from live_server import serving_app
from test_alert_rules import make, review_row, write

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-smallops.json"
PINNED = "rules"  # the model test_alert_rules.make pins ("fake:rules")
UNPINNED = "rules-2027-01-15"  # what a server answered instead
HOSTILE = 'we"ird\\name\nwith \u00e9 and \u2603 {le="1"}'
DAILY_CAP = 2.0


def run_row(workflow: str, started: datetime, **options: Any) -> tuple[Any, ...]:
    """A production run of the pinned model unless told otherwise."""
    return overview_run_row(workflow, started, **{"served": PINNED, "requested": PINNED, **options})


def token() -> str:
    return "metrics-token-" + uuid7().replace("-", "")[-16:]


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Engine:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return engine


def seed(engine: Engine, now: datetime) -> None:
    """triage (configured, a daily budget): calls over the last days with every kind of
    outcome, latencies from 0 ms to minutes, priced and unpriced, a model the server swapped,
    fallback calls, eval calls (left out), 3 pending review items; legacy: in the log only;
    a hostile name; evalonly: eval calls only; two open alerts and a resolved one."""
    hour = now - timedelta(minutes=30)
    rows = [
        run_row("triage", hour - timedelta(minutes=i), latency=latency, cost=0.01 * (i + 1))
        for i, latency in enumerate([0.0, 0.4, 3.0, 30.0, 250.0, 900.0, 1500.0, 9000.0, 7e4, 4e5])
    ]
    rows.append(run_row("triage", hour, status="failed", error="refused", served=None))
    rows.append(run_row("triage", hour, status="queued_for_human", error="throttled", cost=0.0))
    rows.append(run_row("triage", hour, cost=None, served=PINNED, requested=PINNED))
    rows.append(run_row("triage", hour, served=UNPINNED, requested=PINNED, latency=2000.0))
    rows.append(run_row("triage", hour - timedelta(days=3), cost=None, latency=60.0))
    rows += [
        run_row("triage", hour, origin="fallback", served="claude-x", requested="claude-x")
        for _ in range(2)
    ]
    rows.append(run_row("triage", hour, origin=None, served=PINNED, requested=PINNED))
    rows += [run_row("triage", hour, origin="eval", cost=1.0, latency=5.0) for _ in range(4)]
    rows += [run_row("legacy", hour - timedelta(days=9), latency=120.0) for _ in range(3)]
    rows.append(run_row(HOSTILE, hour, status="failed", error="server_error", served=None))
    rows += [run_row("evalonly", hour, origin="eval") for _ in range(2)]
    pending = [row for row in rows if row[1] == "triage"][:3]
    reviews = [review_row(run, now - timedelta(hours=5 - i)) for i, run in enumerate(pending)]
    write(engine, rows, reviews)
    with engine.begin() as connection:
        for rule, workflow, state in [
            ("error_spike", "triage", "firing"),
            ("cost_surprise", "triage", "acknowledged"),
            ("log_backlog", "", "firing"),
            ("review_backlog", "triage", "resolved"),
            ("model_mismatch", "legacy", "pending"),
        ]:
            alert_log.add_alert(connection, alert(rule, workflow, state, now))


def alert(rule: str, workflow: str, state: str, now: datetime) -> dict[str, Any]:
    key = f"{rule}:{workflow}:{uuid7()}"
    return {
        "id": str(uuid7()),
        "rule": rule,
        "workflow": workflow,
        "period": "",
        "dedup_key": key,
        "open_key": None if state == "resolved" else key,
        "state": state,
        "severity": "error",
        "summary": "a test alert",
        "figures": {},
        "link": None,
        "level": 0,
        "repeats": 0,
        "thread": {},
        "fired_at": now - timedelta(hours=1),
        "last_notified_at": now - timedelta(hours=1),
        "updated_at": now - timedelta(hours=1),
        "resolved_at": now if state == "resolved" else None,
    }


def app_for(engine: Engine, tmp_path: Path, database_url: str, secret: str, **options: Any) -> Any:
    wf = make(tmp_path, database_url, budget=Budget(daily=DAILY_CAP))
    desk = ReviewDesk(engine, {wf.name: wf})
    settings = Settings(root=tmp_path, database_url="unused")
    app = create_app(
        desk,
        settings,
        require_login=True,
        secret_key=b"test-secret-key",
        env={auth.TOKEN_ENV: secret},
        **options,
    )
    return app, desk


def scrape(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=30, follow_redirects=False)


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample as (name, labels) -> value, parsed by prometheus_client."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"sample twice: {key}"
            found[key] = sample.value
    return found


def pick(found: dict[Any, float], name: str, **labels: str) -> dict[tuple[str, ...], float]:
    """The samples of `name` whose labels include `labels`, keyed by their other label values."""
    out = {}
    for (sample_name, sample_labels), value in found.items():
        given = dict(sample_labels)
        if sample_name == name and all(given.get(k) == v for k, v in labels.items()):
            out[tuple(v for k, v in sorted(given.items()) if k not in labels)] = value
    return out


PRODUCTION = "(origin IS NULL OR origin != 'eval')"


def query(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql), params)]


def expected_from_runs(engine: Engine, workflow: str) -> dict[str, Any]:
    """The figures of one workflow, straight from SQL over its production runs."""
    w = {"w": workflow}
    where = f"workflow = :w AND {PRODUCTION}"
    statuses = dict(
        query(engine, f"SELECT status, count(*) FROM runs WHERE {where} GROUP BY 1", **w)
    )
    errors = dict(
        query(
            engine,
            f"SELECT error_type, count(*) FROM runs WHERE {where} AND error_type IS NOT NULL "
            "GROUP BY 1",
            **w,
        )
    )
    [(cost, unpriced, tokens_in, tokens_out, cached, mismatches, latency_sum, n)] = query(
        engine,
        "SELECT coalesce(sum(cost_usd), 0), sum(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END), "
        "sum(input_tokens), sum(output_tokens), sum(cached_tokens), "
        "sum(CASE WHEN model_mismatch THEN 1 ELSE 0 END), sum(latency_ms), count(*) "
        f"FROM runs WHERE {where}",
        **w,
    )
    served = dict(
        query(
            engine,
            f"SELECT model_served, count(*) FROM runs WHERE {where} AND model_served IS NOT NULL "
            "GROUP BY 1",
            **w,
        )
    )
    latencies = [row[0] for row in query(engine, f"SELECT latency_ms FROM runs WHERE {where}", **w)]
    buckets = {
        repr(edge / 1000): sum(1 for x in latencies if x < edge) for edge in DURATION_EDGES_MS
    }
    buckets["+Inf"] = len(latencies)
    return {
        "statuses": statuses,
        "errors": errors,
        "cost": float(cost),
        "unpriced": int(unpriced),
        "tokens": {"input": int(tokens_in), "output": int(tokens_out), "cached": int(cached)},
        "mismatches": int(mismatches),
        "latency_sum_s": float(latency_sum) / 1000,
        "count": int(n),
        "served": served,
        "buckets": buckets,
    }


def check_workflow(
    found: dict[Any, float], engine: Engine, workflow: str, pinned: set[str]
) -> None:
    want = expected_from_runs(engine, workflow)
    w = {"workflow": workflow}
    runs = {status: v for (status,), v in pick(found, "smallops_runs_total", **w).items() if v}
    assert runs == want["statuses"]
    assert {e: v for (e,), v in pick(found, "smallops_errors_total", **w).items()} == want["errors"]
    assert pick(found, "smallops_cost_usd_total", **w)[()] == pytest.approx(want["cost"])
    assert pick(found, "smallops_unpriced_runs_total", **w)[()] == want["unpriced"]
    tokens = {kind: v for (kind,), v in pick(found, "smallops_tokens_total", **w).items()}
    assert tokens == want["tokens"]
    assert pick(found, "smallops_model_mismatches_total", **w)[()] == want["mismatches"]
    models: Counter[str] = Counter()
    for model, n in want["served"].items():
        models[model if model in pinned else OTHER_MODEL] += n
    assert {m: v for (m,), v in pick(found, "smallops_model_runs_total", **w).items()} == models
    buckets = {
        le: v for (le,), v in pick(found, "smallops_run_duration_seconds_bucket", **w).items()
    }
    assert buckets == want["buckets"]
    assert pick(found, "smallops_run_duration_seconds_count", **w)[()] == want["count"]
    total = pick(found, "smallops_run_duration_seconds_sum", **w)[()]
    assert total == pytest.approx(want["latency_sum_s"])


def test_metrics_equal_the_database_aggregates(engine, tmp_path, database_url):
    now = datetime.now(timezone.utc)
    seed(engine, now)
    secret = token()
    app, _ = app_for(engine, tmp_path, database_url, secret)
    with serving_app(app) as port:
        answer = scrape(f"http://127.0.0.1:{port}/metrics", Authorization=f"Bearer {secret}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(answer.text)
    check_workflow(found, engine, "triage", {PINNED})
    check_workflow(found, engine, "legacy", set())  # in the log only: no model is pinned
    check_workflow(found, engine, HOSTILE, set())
    assert pick(found, "smallops_model_runs_total", workflow="triage") == {
        (PINNED,): 14,
        (OTHER_MODEL,): 3,  # the swapped model, and the fallback's (triage has no secondary)
    }
    # eval traffic is left out: a workflow with eval calls only is not there at all
    assert not [key for key in found if ("workflow", "evalonly") in key[1]]
    [(eval_calls,)] = query(engine, "SELECT count(*) FROM runs WHERE origin = 'eval'")
    assert eval_calls == 6
    # the review queue and its oldest item's age
    assert pick(found, "smallops_review_queue_items") == {
        ("triage",): 3,
        ("legacy",): 0,
        (HOSTILE,): 0,
    }
    [(oldest,)] = query(engine, "SELECT min(created_at) FROM review_items WHERE state = 'pending'")
    oldest = oldest if isinstance(oldest, datetime) else datetime.fromisoformat(str(oldest))
    oldest = oldest.replace(tzinfo=timezone.utc) if oldest.tzinfo is None else oldest
    age = pick(found, "smallops_review_oldest_pending_age_seconds", workflow="triage")[()]
    assert age == pytest.approx((datetime.now(timezone.utc) - oldest).total_seconds(), abs=30)
    assert 5 * 3600 - 60 < age < 5 * 3600 + 60
    # the daily budget: today's spend (every origin, as the budget counts it) over the cap
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    [(spent,)] = query(
        engine,
        "SELECT coalesce(sum(cost_usd), 0) FROM runs WHERE workflow = 'triage' "
        "AND started_at >= :since",
        since=midnight if engine.dialect.name == "postgresql" else midnight.replace(tzinfo=None),
    )
    used = pick(found, "smallops_budget_used_ratio", workflow="triage")
    assert used == {("daily",): pytest.approx(float(spent) / DAILY_CAP, abs=1e-4)}
    # no shared breaker: this server's own in-memory breaker is not reported as the workers'
    assert pick(found, "smallops_breaker_open") == {}
    # open alerts whose condition holds; pending and resolved ones are not firing
    assert pick(found, "smallops_alerts_firing") == {
        ("error_spike", "triage"): 1,
        ("cost_surprise", "triage"): 1,
        ("log_backlog", ""): 1,
    }


def test_metrics_are_refused_without_the_token_or_a_session(engine, tmp_path, database_url):
    seed(engine, datetime.now(timezone.utc))
    secret = token()
    app, _ = app_for(engine, tmp_path, database_url, secret)
    with serving_app(app) as port:
        url = f"http://127.0.0.1:{port}/metrics"
        bare = scrape(url)
        wrong = scrape(url, Authorization="Bearer not-" + secret)
        browser = scrape(url, Accept="text/html,application/xhtml+xml")
        scraper = scrape(url, Accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
        fine = scrape(
            url, Authorization=f"Bearer {secret}", Accept=scraper.request.headers["accept"]
        )
    assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in bare.text and "smallops_" not in bare.text
    assert wrong.status_code == 401 and "smallops_" not in wrong.text
    assert browser.status_code == 303 and browser.headers["location"].startswith("/login")
    assert scraper.status_code == 401
    assert fine.status_code == 200
    assert fine.headers["content-type"].startswith("application/openmetrics-text")
    assert fine.text.endswith("# EOF\n") and "smallops_runs_total{" in fine.text


def test_a_hostile_workflow_name_is_escaped_and_parses(engine, tmp_path, database_url):
    seed(engine, datetime.now(timezone.utc))
    secret = token()
    app, _ = app_for(engine, tmp_path, database_url, secret)
    with serving_app(app) as port:
        answer = scrape(f"http://127.0.0.1:{port}/metrics", Authorization=f"Bearer {secret}")
    escaped = HOSTILE.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    assert f'workflow="{escaped}"' in answer.text
    assert "\nwith" not in answer.text  # the newline never starts a line of its own
    found = samples(answer.text)
    assert pick(found, "smallops_runs_total", workflow=HOSTILE, status="failed") == {(): 1}


def test_the_loopback_port_serves_the_same_metrics_without_login(engine, tmp_path, database_url):
    seed(engine, datetime.now(timezone.utc))
    secret = token()
    app, desk = app_for(engine, tmp_path, database_url, secret)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve_metrics(desk, port)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        loopback = scrape(url)
        rebound = scrape(url, Host="metrics.attacker.example")
        with serving_app(app) as app_port:
            guarded = scrape(
                f"http://127.0.0.1:{app_port}/metrics", Authorization=f"Bearer {secret}"
            )
    finally:
        server.should_exit = True
    assert loopback.status_code == 200
    assert rebound.status_code == 400 and "smallops_" not in rebound.text
    without_ages = {
        key: value
        for key, value in samples(loopback.text).items()
        if key[0] != "smallops_review_oldest_pending_age_seconds"
    }
    assert without_ages == {
        key: value
        for key, value in samples(guarded.text).items()
        if key[0] != "smallops_review_oldest_pending_age_seconds"
    }
    check_workflow(samples(loopback.text), engine, "triage", {PINNED})
    assert server.config.host == "127.0.0.1"


def test_a_taken_metrics_port_is_a_clear_error(engine, tmp_path, database_url):
    from smallops.errors import ConfigError

    _, desk = app_for(engine, tmp_path, database_url, token())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"):
            serve_metrics(desk, taken.getsockname()[1])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_metrics(engine, tmp_path, database_url):
    seed(engine, datetime.now(timezone.utc))
    secret = token()
    app, _ = app_for(engine, tmp_path, database_url, secret)
    with serving_app(app) as port:
        answer = scrape(f"http://127.0.0.1:{port}/metrics", Authorization=f"Bearer {secret}")
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=answer.content,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "" and checked.stderr.decode().strip() == ""


def exposed_names() -> set[str]:
    """The sample names /metrics can expose, from the collector's own families."""
    names = set()
    for family in families(MetricFigures({}, Counter())):
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def test_the_grafana_dashboard_is_json_and_uses_only_exposed_metrics():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) >= 5
    used = {name for expr in exprs for name in re.findall(r"\bsmallops_[a-z_]+", expr)}
    assert used and used <= exposed_names(), used - exposed_names()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("runs", "cost", "p95", "queue", "alerts"):
        assert topic in titles


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_grafana_queries_are_valid_promql(tmp_path):
    """Each panel's query, with Grafana's variables filled in, as a recording rule that
    `promtool check rules` parses."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    filled = [e.replace("$__rate_interval", "5m").replace("$workflow", ".*") for e in exprs]
    rules = {
        "groups": [
            {
                "name": "grafana",
                "rules": [
                    {"record": f"smallops:panel_{i}", "expr": e} for i, e in enumerate(filled)
                ],
            }
        ]
    }
    path = tmp_path / "rules.json"  # JSON is YAML
    path.write_text(json.dumps(rules))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_readme_scrape_config_is_one_prometheus_takes(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Prometheus", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    token_file = tmp_path / "token"
    token_file.write_text(token())
    config = tmp_path / "prometheus.yml"
    config.write_text(block.replace("/etc/prometheus/smallops-review-token", str(token_file)))
    checked = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_the_cli_starts_without_loading_prometheus_client():
    probe = "import sys, smallops.cli, smallops.web.app; print('prometheus_client' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "False"


def test_a_scrape_keeps_the_settled_hours_and_reads_them_again_for_late_runs(engine, monkeypatch):
    """The hours older than a day are summed once and kept; recent runs count at once, and a
    run logged late into an old hour (a replayed spool) once the settled hours are re-read."""
    from smallops.dashboards import metrics
    from smallops.storage.rollup_reads import production

    def calls(found: dict[str, Any]) -> tuple[int, int, float]:
        triage = found["triage"].totals
        return triage.calls, sum(triage.histogram.values()), round(triage.cost_usd, 6)

    now = datetime.now(timezone.utc)
    boundary = (now - metrics.SETTLED_AFTER).replace(minute=0, second=0, microsecond=0)
    write(
        engine,
        [
            run_row("triage", now - timedelta(days=3), cost=0.5),
            run_row("triage", boundary, cost=0.25),  # the first recent hour
            run_row("triage", boundary - timedelta(seconds=1), cost=0.125),  # the last settled
            run_row("triage", now - timedelta(minutes=5), cost=1.0),
        ],
    )
    all_time = metrics.AllTimeProduction(engine)
    assert calls(all_time(now)) == calls(production(engine)) == (4, 4, 1.875)
    write(
        engine,
        [
            run_row("triage", now - timedelta(days=4), cost=2.0),  # late, into an old hour
            run_row("triage", now - timedelta(minutes=1), cost=4.0),
        ],
    )
    assert calls(all_time(now)) == (5, 5, 5.875)  # the recent run at once; the late one waits
    monkeypatch.setattr(metrics, "REREAD_SETTLED_SECONDS", 0.0)
    assert calls(all_time(now)) == calls(production(engine)) == (6, 6, 7.875)
