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
4. The dashboard pages (median and p95 of 20 requests each to `smallops serve`): to come with
   the web dashboards, in `dashboard_pages` below.

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

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from smallops.evals.shifts import distribution_shifts, model_changes
from smallops.ids import uuid7
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.queries import report
from smallops.storage.schema import PROMPT_COLUMNS, RUN_COLUMNS

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SMALLOPS = Path(sys.executable).parent / "smallops"
DAYS = 90
CHUNK = 10_000
WORKFLOWS = {  # name: (share of the calls, enum values of its `category`)
    "email-triage": (0.5, ["billing", "bug", "sales", "spam", "other"]),
    "refund-check": (0.3, ["approve", "deny", "escalate"]),
    "ticket-summary": (0.2, ["short", "long"]),
}
PINNED = "gpt-4o-mini-2024-07-18"
UPGRADED = "gpt-4o-mini-2024-09-30"
SECONDARY = "claude-sonnet-4-6"
ERRORS = [
    ("fallback_review", "server_error"),
    ("fallback_review", "timeout"),
    ("failed", "refused"),
]
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


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


def run_rows(n: int, now: datetime, payload_bytes: int, seed: int = 1) -> Iterator[list[Any]]:
    """`n` runs, oldest first, in chunks of rows in RUN_COLUMNS order (datetimes)."""
    rng = random.Random(seed)
    names = list(WORKFLOWS)
    shares = [WORKFLOWS[w][0] for w in names]
    start = now - timedelta(days=DAYS)
    step = DAYS * 86400 / n
    filler = "x" * max(0, payload_bytes // 2)
    chunk: list[Any] = []
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
            "review_route": None,
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
        }
        chunk.append([values[c] for c in RUN_COLUMNS])
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def seed_sqlite(path: Path, n: int, payload_bytes: int) -> None:
    now = datetime.now(timezone.utc)
    times = [RUN_COLUMNS.index("started_at"), RUN_COLUMNS.index("finished_at")]
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA synchronous=OFF")
    marks = ", ".join("?" * len(RUN_COLUMNS))
    sql = f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({marks})"
    prompts = [list(row) for row in prompt_rows(now)]
    created = PROMPT_COLUMNS.index("created_at")
    for row in prompts:
        row[created] = row[created].strftime(_SQLITE_TIME)
    marks = ", ".join("?" * len(PROMPT_COLUMNS))
    connection.executemany(
        f"INSERT INTO prompt_versions ({', '.join(PROMPT_COLUMNS)}) VALUES ({marks})", prompts
    )
    done = 0
    for chunk in run_rows(n, now, payload_bytes):
        for row in chunk:
            for i in times:
                row[i] = row[i].strftime(_SQLITE_TIME)
        connection.execute("BEGIN")
        connection.executemany(sql, chunk)
        connection.execute("COMMIT")
        done += len(chunk)
        progress("seeded", done, n)
    connection.close()


def seed_postgres(url: str, n: int, payload_bytes: int) -> None:
    import psycopg

    now = datetime.now(timezone.utc)
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain) as connection, connection.cursor() as cursor:
        marks = ", ".join(["%s"] * len(PROMPT_COLUMNS))
        cursor.executemany(
            f"INSERT INTO prompt_versions ({', '.join(PROMPT_COLUMNS)}) VALUES ({marks})",
            prompt_rows(now),
        )
        done = 0
        copy_sql = f"COPY runs ({', '.join(RUN_COLUMNS)}) FROM STDIN"
        for chunk in run_rows(n, now, payload_bytes):
            with cursor.copy(copy_sql) as copy:
                for row in chunk:
                    copy.write_row(row)
            connection.commit()
            done += len(chunk)
            progress("seeded", done, n)
        cursor.execute("ANALYZE")
        connection.commit()


def progress(what: str, done: int, total: int) -> None:
    if done == total or done % 100_000 == 0:
        print(f"  {what} {done:,} / {total:,}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def pg_schema(url: str, keep: bool) -> Iterator[str]:
    """A fresh schema on the Postgres at `url`, dropped afterwards unless kept."""
    parsed = make_url(normalise_url(url, Path.cwd()))
    admin = create_engine(parsed, isolation_level="AUTOCOMMIT")
    name = f"smallops_dashboard_{os.getpid()}"
    with admin.connect() as c:
        c.execute(text(f"CREATE SCHEMA {name}"))
    try:
        yield parsed.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(False)
    finally:
        if not keep:
            with admin.connect() as c:
                c.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


def cli(project: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run the smallops command (this checkout's code) and time it, process start included."""
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
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


def dashboard_pages(project: Path, url: str) -> dict[str, Any]:
    """The dashboard pages' timings (median and p95 of 20 requests to `smallops serve`, HTML
    and JSON): to be added with the web dashboards."""
    return {}


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
                url = stack.enter_context(pg_schema(args.pg_url, keep=args.keep is not None))
            (project / "smallops.toml").write_text(f'[smallops]\ndatabase_url = "{url}"\n')
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

            pages = dashboard_pages(project, url)
            results["pages"] = pages
            print("4. Dashboard pages: " + ("to come with the web dashboards" if not pages else ""))
    finally:
        if args.keep is None:
            shutil.rmtree(project, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
