"""The dashboards' figures over a big log: seed it, rebuild its rollups, time what reads them.

1. Seed: --runs runs (default 1,000,000) over 90 days across three workflows, inserted straight
   into `runs` (SQLite: executemany; Postgres: COPY), as a log written before the rollups
   existed or imported would be: errors, eval and fallback traffic, unpriced calls, a served
   model that changes on day 60, outputs with enum fields for the drift check, and about
   --payload-bytes of inputs and attempts per run.
2. `smallops db rebuild-rollups --json` as a subprocess: its wall time. Target: under 2 minutes
   for a million runs.
3. `smallops report --json --since 30d` as a subprocess, median (and spread) of --repeat runs,
   process start included. Target: under 1 s. Also, in this process, how long its two parts
   take: the figures from the rollups (storage.queries.report) and the drift section (model
   changes and distribution shifts, evals/shifts.py, which still read the runs).
4. The dashboard pages (overview, workflow, runs browser, a run, the queue, an item, eval
   history, an eval run, a comparison) each as HTML and as JSON, and a Prometheus scrape of
   /metrics: median and p95 of 20 requests each to a real `smallops serve`. Target: every p95
   under 300 ms. The seed adds a review item for each run the policy sent to a human (decided
   once older than two days) and EVAL_RUNS eval runs per workflow.

Run: python bench/dashboard.py [--runs 1000000] [--engine sqlite|postgres] [--pg-url URL]
     [--payload-bytes 2000] [--repeat 5] [--keep DIR [--reuse]] [--json]
The machine is shared and noisy: quote medians and the conditions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from scratch import pg_schema
from sqlalchemy import text
from sqlalchemy.engine import make_url

from smallops.evals.shifts import distribution_shifts, model_changes
from smallops.ids import uuid7
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.queries import report
from smallops.storage.schema import (
    PROMPT_COLUMNS,
    REVIEW_COLUMNS,
    RUN_COLUMNS,
    eval_results,
    eval_runs,
    review_decisions,
)

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SMALLOPS = Path(sys.executable).parent / "smallops"
DAYS = 90
CHUNK = 10_000
WORKFLOWS = {  # name: (share of the calls, enum values of its `category`)
    "email-triage": (0.5, ["billing", "support", "sales", "spam", "other"]),
    "refund-check": (0.3, ["approve", "deny", "escalate"]),
    "ticket-summary": (0.2, ["short", "long"]),
}
PINNED = "gpt-4o-mini-2024-07-18"
UPGRADED = "gpt-4o-mini-2024-09-30"
SECONDARY = "claude-sonnet-4-6"
ERRORS = [
    ("queued_for_human", "server_error"),
    ("queued_for_human", "timeout"),
    ("failed", "refused"),
]
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
PENDING_DAYS = 2  # review items younger than this are still pending
DECISION_COLUMNS = tuple(column.name for column in review_decisions.columns)
EVAL_CASES = 40
EVAL_RUNS = 12  # per workflow, across two prompt versions


def write_project(project: Path, url: str) -> None:
    """smallops.toml naming the log, and the three workflows (so the pages can show their
    budgets, breakers and review forms, and sort the queue by an output field)."""
    (project / "smallops.toml").write_text(f'[smallops]\ndatabase_url = "{url}"\n')
    folder = project / "workflows"
    folder.mkdir(exist_ok=True)
    lines = [
        "from typing import Literal",
        "from pydantic import BaseModel",
        "from smallops import Budget, Workflow",
    ]
    for name, (_, categories) in WORKFLOWS.items():
        ident = name.replace("-", "_")
        (folder / f"{ident}.prompt").write_text("[system]\nClassify.\n[user]\n{{ body }}\n")
        lines += [
            f"class {ident.title().replace('_', '')}(BaseModel):",
            f"    category: Literal{categories!r}",
            "    urgency: Literal['low', 'normal', 'high']",
            "    summary: str",
            f"{ident} = Workflow({name!r}, model='openai:{PINNED}', prompt='{ident}.prompt',",
            f"    output={ident.title().replace('_', '')}, review='all', fallback='review',",
            "    budget=Budget(daily=50, monthly=1000), owner='ops@example.com')",
        ]
    (folder / "bench_workflows.py").write_text("\n".join(lines) + "\n")


def prompt_rows(now: datetime) -> list[tuple[Any, ...]]:
    out = []
    for name, (_, categories) in WORKFLOWS.items():
        schema = {
            "type": "object",
            "properties": {
                "category": {"type": "string", "enum": categories},
                "urgency": {"type": "string", "enum": ["low", "normal", "high"]},
                "summary": {"type": "string"},
            },
        }
        values = {
            "id": f"{name[:8]}v1".ljust(16, "0")[:16],
            "workflow": name,
            "template": "[system]\nClassify.\n[user]\n{{ body }}",
            "output_schema": json.dumps(schema),
            "model": PINNED,
            "params": "{}",
            "created_at": now - timedelta(days=DAYS + 1),
        }
        out.append(tuple(values[c] for c in PROMPT_COLUMNS))
    return out


Chunk = tuple[list[list[Any]], list[list[Any]], list[list[Any]]]


def run_rows(n: int, now: datetime, payload_bytes: int, seed: int = 1) -> Iterator[Chunk]:
    """`n` runs, oldest first, in chunks: rows of runs (RUN_COLUMNS order, datetimes), of their
    review items (REVIEW_COLUMNS) and of the decisions on them (DECISION_COLUMNS). A run whose
    review route is `required` gets an item; items older than PENDING_DAYS are decided."""
    rng = random.Random(seed)
    names = list(WORKFLOWS)
    shares = [WORKFLOWS[w][0] for w in names]
    start = now - timedelta(days=DAYS)
    step = DAYS * 86400 / n
    filler = "x" * max(0, payload_bytes // 2)
    chunk: list[list[Any]] = []
    items: list[list[Any]] = []
    decisions: list[list[Any]] = []
    for i in range(n):
        workflow = rng.choices(names, shares)[0]
        started = start + timedelta(seconds=i * step + rng.random() * step)
        day = (started - start).days
        origin = rng.choices(["app", "eval", "fallback"], [0.93, 0.05, 0.02])[0]
        status, error = ("auto", None)
        if rng.random() < 0.04:
            status, error = rng.choice(ERRORS)
        elif rng.random() < 0.1:
            status = "pending_review"
        served: str | None = UPGRADED if workflow == "email-triage" and day >= 60 else PINNED
        if origin == "fallback":
            served, status = SECONDARY, "fallback_secondary"
        if origin == "eval" and status == "pending_review":
            status = "auto"  # eval calls are never reviewed
        if status == "failed":
            served = None
        latency = rng.lognormvariate(6.3, 0.5)
        categories = WORKFLOWS[workflow][1]
        output = None
        if status != "failed":
            output = json.dumps(
                {
                    "category": rng.choice(categories),
                    "urgency": rng.choice(["low", "normal", "high"]),
                    "summary": "short summary",
                }
            )
        values = {
            "id": uuid7(),
            "workflow": workflow,
            "prompt_version": f"{workflow[:8]}v1".ljust(16, "0")[:16],
            "git_commit": "0" * 40,
            "provider": "anthropic" if origin == "fallback" else "openai",
            "endpoint": "https://api.openai.com/v1",
            "model_requested": SECONDARY if origin == "fallback" else PINNED,
            "model_served": served,
            "model_mismatch": served == UPGRADED,
            "allow_unpinned": False,
            "system_fingerprint": "fp_0000",
            "status": status,
            "error_type": error,
            "error_message": None,
            "review_policy": "none",
            "review_route": "required" if status == "pending_review" else None,
            "origin": origin,
            "guards": None,
            "fallback": "review",
            "attempt_count": 1,
            "input_tokens": rng.randint(200, 2000),
            "output_tokens": rng.randint(20, 300),
            "cached_tokens": rng.randint(0, 200),
            "reasoning_tokens": 0,
            "cost_usd": None if rng.random() < 0.01 else rng.uniform(0.0001, 0.002),
            "cost_source": "genai-prices",
            "latency_ms": latency,
            "started_at": started,
            "finished_at": started + timedelta(milliseconds=latency),
            "inputs": json.dumps({"subject": "hello", "body": filler}),
            "messages": None,
            "output": output,
            "attempts": json.dumps([{"status": 200, "request": {"body": filler}}]),
            "content": None,
            "flags": None,
            "batch_id": None,
            "batch_item": None,
            "compacted": None,
            "trace_parent": None,
        }
        chunk.append([values[c] for c in RUN_COLUMNS])
        if status == "pending_review":
            item, decision = review_rows(values, now, rng)
            items.append(item)
            if decision:
                decisions.append(decision)
        if len(chunk) == CHUNK:
            yield chunk, items, decisions
            chunk, items, decisions = [], [], []
    if chunk:
        yield chunk, items, decisions


def review_rows(
    run: dict[str, Any], now: datetime, rng: random.Random
) -> tuple[list[Any], list[Any] | None]:
    """The review item of a run that needs a human and, once it is old enough, its decision:
    mostly approvals, some corrections (urgency raised) and rejections."""
    output = json.loads(run["output"])
    started: datetime = run["started_at"]
    item: dict[str, Any] = {
        "run_id": run["id"],
        "workflow": run["workflow"],
        "prompt_version": run["prompt_version"],
        "model_served": run["model_served"],
        "reason": "policy",
        "route": "required",
        "error_type": None,
        "output": run["output"],
        "classes": json.dumps([f"category={output['category']}"]),
        "state": "pending",
        "created_at": started,
        **dict.fromkeys(["claimed_by", "claimed_until", "decided_by", "decided_at"]),
        **dict.fromkeys(["final_output", "reject_reason"]),
    }
    if now - started < timedelta(days=PENDING_DAYS):
        return [item[c] for c in REVIEW_COLUMNS], None
    action = rng.choices(["approve", "correct", "reject"], [0.75, 0.18, 0.07])[0]
    decided = started + timedelta(minutes=rng.uniform(5, 600))
    after = {**output, "urgency": "high"} if action == "correct" else output
    reason = "not an email for us" if action == "reject" else None
    reviewer = f"r{rng.randrange(5):02d}"
    state = {"approve": "approved", "correct": "corrected", "reject": "rejected"}[action]
    final = None if action == "reject" else json.dumps(after)
    item.update(state=state, decided_by=reviewer, decided_at=decided, final_output=final)
    item["reject_reason"] = reason
    decision = {
        "id": uuid7(),
        "run_id": run["id"],
        "workflow": run["workflow"],
        "action": action,
        "reviewer": reviewer,
        "decided_at": decided,
        "output_before": run["output"],
        "output_after": final,
        "reason": reason,
        "route": None,
        "hook_error": None,
    }
    return [item[c] for c in REVIEW_COLUMNS], [decision[c] for c in DECISION_COLUMNS]


def seed_sqlite(path: Path, n: int, payload_bytes: int) -> None:
    now = datetime.now(timezone.utc)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA synchronous=OFF")
    prompts = [list(row) for row in prompt_rows(now)]
    connection.executemany(_insert("prompt_versions", PROMPT_COLUMNS, "?"), map(_texts, prompts))
    done = 0
    tables = [("runs", RUN_COLUMNS), ("review_items", REVIEW_COLUMNS)]
    tables.append(("review_decisions", DECISION_COLUMNS))
    for chunks in run_rows(n, now, payload_bytes):
        connection.execute("BEGIN")
        for (table, columns), rows in zip(tables, chunks, strict=True):
            connection.executemany(_insert(table, columns, "?"), map(_texts, rows))
        connection.execute("COMMIT")
        done += len(chunks[0])
        progress("seeded", done, n)
    connection.close()


def _insert(table: str, columns: tuple[str, ...], mark: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"


def _texts(row: list[Any]) -> list[Any]:
    """A row for sqlite3: its datetimes as the text SQLAlchemy stores on SQLite."""
    return [v.strftime(_SQLITE_TIME) if isinstance(v, datetime) else v for v in row]


def seed_postgres(url: str, n: int, payload_bytes: int) -> None:
    import psycopg

    now = datetime.now(timezone.utc)
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    tables = [("runs", RUN_COLUMNS), ("review_items", REVIEW_COLUMNS)]
    tables.append(("review_decisions", DECISION_COLUMNS))
    with psycopg.connect(plain) as connection, connection.cursor() as cursor:
        cursor.executemany(_insert("prompt_versions", PROMPT_COLUMNS, "%s"), prompt_rows(now))
        done = 0
        for chunks in run_rows(n, now, payload_bytes):
            for (table, columns), rows in zip(tables, chunks, strict=True):
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            connection.commit()
            done += len(chunks[0])
            progress("seeded", done, n)
        cursor.execute("ANALYZE")
        connection.commit()


def seed_evals(url: str, seed: int = 2) -> int:
    """EVAL_RUNS eval runs per workflow over the 90 days, two prompt versions each, of
    EVAL_CASES cases whose checks carry expected values (for accuracy and confusions)."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    engine = get_engine(url)
    count = 0
    with engine.begin() as connection:
        for name, (_, categories) in WORKFLOWS.items():
            expected = [rng.choice(categories) for _ in range(EVAL_CASES)]
            for k in range(EVAL_RUNS):
                version = f"{name[:8]}v{1 + 2 * k // EVAL_RUNS}".ljust(16, "0")[:16]
                started = now - timedelta(days=DAYS) + timedelta(days=k * DAYS / EVAL_RUNS)
                skill = 0.8 + 0.1 * (2 * k // EVAL_RUNS) + rng.uniform(-0.05, 0.05)
                results = []
                for i, want in enumerate(expected):
                    got = want if rng.random() < skill else rng.choice(categories)
                    check = {"field": "category", "passed": got == want, "error": False}
                    check |= {"detail": f"expected {want!r}, got {got!r}", "no_answer": None}
                    results.append(
                        {
                            "eval_run_id": None,
                            "case_id": f"case-{i:03d}",
                            "repeat": 0,
                            "run_id": None,
                            "passed": got == want,
                            "cached": False,
                            "checks": [{**check, "expected": want}],
                            "output": {"category": got, "urgency": "normal", "summary": "s"},
                            "error": None,
                        }
                    )
                run_id = uuid7()
                passed = sum(r["passed"] for r in results)
                scores = {r["case_id"]: float(r["passed"]) for r in results}
                connection.execute(
                    eval_runs.insert().values(
                        id=run_id,
                        workflow=name,
                        prompt_version=version,
                        model=f"openai:{PINNED}",
                        dataset=f"evals/{name}.jsonl",
                        cases=EVAL_CASES,
                        repeat=1,
                        passed=passed,
                        cost_usd=EVAL_CASES * 0.0008,
                        verdict=rng.choice(["pass", "pass", "pass", "regression"]) if k else None,
                        git_commit="0" * 40,
                        started_at=started,
                        finished_at=started + timedelta(seconds=30),
                        summary={"scores": scores, "calls_made": EVAL_CASES, "unpriced": 0},
                    )
                )
                for r in results:
                    r["eval_run_id"] = run_id
                connection.execute(eval_results.insert(), results)
                count += 1
    engine.dispose()
    return count


def progress(what: str, done: int, total: int) -> None:
    if done == total or done % 100_000 == 0:
        print(f"  {what} {done:,} / {total:,}", file=sys.stderr, flush=True)


def command_env() -> dict[str, str]:
    """The environment of the smallops commands timed here: this checkout's code, the log named
    by the project, and bytecode cached as an installed package has it (a machine that sets
    PYTHONDONTWRITEBYTECODE would otherwise compile every module on every start)."""
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("SMALLOPS_DATABASE_URL", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def cli(project: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run the smallops command (this checkout's code) and time it, process start included."""
    env = command_env()
    started = time.perf_counter()
    done = subprocess.run(
        [str(SMALLOPS), "-p", str(project), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"smallops {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, done


def report_parts(url: str) -> dict[str, float]:
    """In this process: the rollups part and the drift part of `report --since 30d`."""
    engine = get_engine(url)
    since = datetime.now(timezone.utc) - timedelta(days=30)
    started = time.perf_counter()
    rows = report(engine, since=since)
    figures = time.perf_counter() - started
    started = time.perf_counter()
    for row in rows:
        model_changes(engine, row["workflow"])
    changes = time.perf_counter() - started
    started = time.perf_counter()
    for row in rows:
        distribution_shifts(engine, row["workflow"])
    shifts = time.perf_counter() - started
    return {"rollups_s": figures, "model_changes_s": changes, "distribution_shifts_s": shifts}


def dashboard_pages(project: Path, url: str, requests: int = 20) -> dict[str, Any]:
    """Each dashboard page, as HTML and as JSON: median and p95 of `requests` requests to a
    real `smallops serve` (uvicorn, as the CLI starts it) on this log, one request at a time,
    after one warm-up request per page."""
    import httpx

    pages = page_paths(url)
    port = free_port()
    env = command_env()
    server = subprocess.Popen(
        [str(SMALLOPS), "-p", str(project), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    out: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_for(client, server)
            for name, path in pages.items():
                for kind, headers in (("html", {}), ("json", {"Accept": "application/json"})):
                    times = []
                    for i in range(requests + 1):
                        started = time.perf_counter()
                        answer = client.get(path, headers=headers)
                        if answer.status_code != 200:
                            sys.exit(
                                f"GET {path} ({kind}): {answer.status_code} {answer.text[:300]}"
                            )
                        if i:  # the first one warms caches
                            times.append((time.perf_counter() - started) * 1000)
                    out[f"{name} {kind}"] = {
                        "path": path,
                        "median_ms": statistics.median(times),
                        "p95_ms": quantile(times, 0.95),
                    }
    finally:
        server.terminate()
        server.wait(30)
    return out


def page_paths(url: str) -> dict[str, str]:
    """The pages to time, with real ids from the seeded log."""
    engine = get_engine(url)
    with engine.connect() as c:
        run_id = c.execute(
            text("SELECT max(id) FROM runs WHERE workflow = 'email-triage'")
        ).scalar()
        item = c.execute(
            text("SELECT max(run_id) FROM review_items WHERE state = 'pending'")
        ).scalar()
        evals = (
            c.execute(
                text(
                    "SELECT id FROM eval_runs WHERE workflow = 'email-triage' "
                    "ORDER BY started_at DESC LIMIT 2"
                )
            )
            .scalars()
            .all()
        )
    engine.dispose()
    return {
        "overview": "/dashboard",
        "workflow 30d": "/workflows/email-triage",
        "workflow 90d": "/workflows/email-triage?since=90d",
        "runs": "/runs",
        "runs filtered": (
            "/runs?workflow=email-triage&status=queued_for_human&error_type=timeout&since=30d"
        ),
        "runs search": "/runs?q=escalate&since=7d",
        "run": f"/runs/{run_id}",
        "queue": "/",
        "queue by urgency": "/?sort=-urgency",
        "item": f"/items/{item}",
        "eval history": "/evals",
        "eval run": f"/evals/{evals[0]}",
        "eval compare": f"/evals/compare?a={evals[1]}&b={evals[0]}",
        "metrics": "/metrics",  # a Prometheus scrape (text whatever the Accept header)
    }


def wait_for(client: Any, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(
                f"smallops serve exited: {server.stderr.read().decode() if server.stderr else ''}"
            )
        with contextlib.suppress(Exception):
            if client.get("/login").status_code < 500:
                return
        time.sleep(0.2)
    sys.exit("smallops serve did not answer within 60 s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description="report and rollups over a big log")
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--payload-bytes", type=int, default=2000, help="inputs + attempts per run")
    p.add_argument("--repeat", type=int, default=5, help="report runs to take the median of")
    p.add_argument("--keep", type=Path, help="keep the project (and database) in this folder")
    p.add_argument("--reuse", action="store_true", help="time the log already in --keep")
    p.add_argument("--json", action="store_true", help="the results as JSON on stdout")
    args = p.parse_args()
    if args.reuse and not (args.keep and (args.keep / "smallops.toml").is_file()):
        p.error("--reuse needs --keep naming a folder this script seeded (SQLite)")

    project = args.keep or Path(tempfile.mkdtemp(prefix="smallops-dashboard-"))
    project.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"engine": args.engine, "runs": args.runs}
    try:
        with contextlib.ExitStack() as stack:
            if args.engine == "sqlite" or args.reuse:
                url = f"sqlite:///{project / 'log.db'}"
            else:
                kept = args.keep is not None
                url = stack.enter_context(pg_schema(args.pg_url, "dashboard", keep=kept))
            write_project(project, url)
            url = normalise_url(url, project)
            ensure_schema(get_engine(url))
            print(f"1. Seeding {args.runs:,} runs over {DAYS} days ({args.engine})", flush=True)
            started = time.perf_counter()
            if args.reuse:
                print("   skipped: --reuse")
            elif args.engine == "sqlite":
                seed_sqlite(project / "log.db", args.runs, args.payload_bytes)
                size = (project / "log.db").stat().st_size
                results["database_bytes"] = size
            else:
                seed_postgres(url, args.runs, args.payload_bytes)
            results["seed_s"] = time.perf_counter() - started
            print(f"   {results['seed_s']:.0f} s")

            seconds, done = cli(project, "db", "rebuild-rollups", "--json")
            rebuilt = json.loads(done.stdout)
            results["rebuild_rollups_s"] = seconds
            results["rollup_rows"] = rebuilt["rollup_rows"]
            verdict = "PASS" if seconds < 120 else "MISS"
            print(
                f"2. db rebuild-rollups: {seconds:.1f} s wall ({rebuilt['runs']:,} runs into "
                f"{rebuilt['rollup_rows']:,} rollup rows)  target < 120 s: {verdict}"
            )

            cli(project, "report", "--json", "--since", "30d")  # warm the page cache once
            walls = [
                cli(project, "report", "--json", "--since", "30d")[0] for _ in range(args.repeat)
            ]
            results["report_s"] = statistics.median(walls)
            results["report_runs_s"] = walls
            verdict = "PASS" if results["report_s"] < 1 else "MISS"
            print(
                f"3. report --json --since 30d: median {results['report_s']:.2f} s wall of "
                f"{args.repeat} ({' '.join(f'{w:.2f}' for w in walls)})  target < 1 s: {verdict}"
            )
            parts = report_parts(url)
            results["report_parts"] = parts
            help_s = statistics.median(cli(project, "--help")[0] for _ in range(3))
            results["help_s"] = help_s
            print(
                f"   of which, in process: figures from the rollups {parts['rollups_s']:.3f} s, "
                f"model changes {parts['model_changes_s']:.3f} s, distribution shifts "
                f"{parts['distribution_shifts_s']:.3f} s (both from the runs); "
                f"`smallops --help` alone {help_s:.2f} s"
            )

            evals = seed_evals(url) if not args.reuse else 0
            pages = dashboard_pages(project, url)
            results["pages"] = pages
            slowest = max(page["p95_ms"] for page in pages.values())
            verdict = "PASS" if slowest < 300 else "MISS"
            print(f"4. Dashboard pages ({evals} eval runs seeded), 20 requests each, ms:")
            print(f"   {'page':<28} {'median':>8} {'p95':>8}  path")
            for name, page in pages.items():
                print(
                    f"   {name:<28} {page['median_ms']:8.1f} {page['p95_ms']:8.1f}  {page['path']}"
                )
            print(f"   slowest p95 {slowest:.0f} ms  target < 300 ms: {verdict}")
    finally:
        if args.keep is None:
            shutil.rmtree(project, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
