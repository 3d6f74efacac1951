"""The review desk under load: 30 reviewers on one `smallops serve` in front of Postgres.

1. Load: seeds N pending review items (default 20,000) of the email-triage workflow into a
   scratch Postgres schema, starts one real `smallops serve --login` (uvicorn, as the CLI does)
   with 30 reviewers in smallops.toml's [reviewers], and drives them with httpx as a browser
   would: GET /login, POST /login with the form's CSRF token, GET /, POST /next, then GET the
   item page and POST approve with the form's CSRF token, again and again (the approve answers
   with a redirect to the next item); every 10th decision a reviewer also reloads the queue page.
   Two phases, on the same server and queue:
   - capacity: the reviewers never pause (a closed loop), so decisions/s is what the desk can
     take. Latency there says little: with 30 clients always waiting, every answer queues
     behind the others' (Little's law: about 30 / requests per second), whatever the server.
   - latency at --rate R (default 100): the reviewers together start R open-and-approve cycles
     a second, each on its own schedule (an open loop, as wrk2 or k6's constant arrival rate),
     and latency is measured at that load; a cycle that starts late is counted, never skipped.
   Each phase prints decisions/s and the decision, item page and queue page p50/p95; then every
   decision of both is checked to be recorded exactly once. Targets: >= 100 decisions/s of
   capacity; at 100 decisions/s, decision p95 < 200 ms and queue page p95 < 100 ms.
2. Statements: the SQL statements one open-and-approve cycle (GET the item page, POST approve,
   which claims the next item) issues, counted in-process with a `before_cursor_execute` hook.
3. Stats (--stats-runs N, default 200,000; 0 skips it): `review stats` and the distribution-shift
   check over N runs of the workflow, timed in-process, median of 3.

The machine is shared and noisy: quote medians and the conditions.

Run: python bench/desk_load.py [--database-url URL] [--items 20000] [--reviewers 30]
     [--seconds 30] [--rate 100] [--stats-runs 200000] [--json]
(--seconds is per phase; 0 skips the load test, to time the stats alone. --rate 0 skips the
latency phase.)
The URL defaults to SMALLOPS_TEST_DATABASE_URL. Everything is made in a fresh schema that is
dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from scratch import pg_schema
from sqlalchemy import (
    JSON,
    Column,
    Engine,
    MetaData,
    Table,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from smallops.ids import uuid7
from smallops.storage.db import ensure_schema
from smallops.storage.schema import Json, prompt_versions, review_decisions, review_items, runs
from smallops.web.auth import hash_password

WORKFLOW = "email-triage"
PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
CATEGORIES = ["billing", "support", "sales", "spam", "other"]
URGENCIES = ["low", "normal", "high"]
STATES = {"approve": "approved", "correct": "corrected"}
CLI = [sys.executable, "-c", "import sys; from smallops.cli import main; main(sys.argv[1:])"]


def plain(table: Table) -> Table:
    """`table` without the redaction and cleaning of its Json and Text columns: the seeded values
    are clean, and the bench need not wait for them to be checked."""
    columns = []
    for column in table.columns:
        kind: Any = column.type
        if isinstance(kind, Json):
            kind = JSON().with_variant(JSONB(), "postgresql")
        elif isinstance(kind, TypeDecorator):
            kind = kind.impl
        columns.append(Column(column.name, kind, primary_key=column.primary_key))
    return Table(table.name, MetaData(), *columns)


def seed(
    engine: Engine,
    items: int,
    version: str,
    folder: Path,
    *,
    decided: bool = False,
    start: datetime | None = None,
) -> None:
    """`items` runs of the workflow, each with a review item, oldest first a second apart;
    pending, or (`decided`) approved or corrected with its decision row. Outputs are drawn at
    random (seeded) from the Triage classes."""
    rng = random.Random(11)
    start = start or datetime.now(timezone.utc) - timedelta(seconds=items + 60)
    schema = output_schema(folder)
    with engine.begin() as c:
        if not c.execute(
            text("SELECT 1 FROM prompt_versions WHERE id = :id"), {"id": version}
        ).first():
            c.execute(
                prompt_versions.insert(),
                {
                    "id": version,
                    "workflow": WORKFLOW,
                    "template": "[system]\nSort the email.\n[user]\nSubject: {{ subject }}\n",
                    "output_schema": schema,
                    "model": "gpt-4o-mini-2024-07-18",
                    "params": {},
                    "created_at": start,
                },
            )
    batch = 5000
    for first in range(0, items, batch):
        run_rows: list[dict[str, Any]] = []
        item_rows: list[dict[str, Any]] = []
        decision_rows: list[dict[str, Any]] = []
        for n in range(first, min(items, first + batch)):
            at = start + timedelta(seconds=n)
            run_id = uuid7()
            failed = rng.random() < 0.02
            error_type = "timeout" if rng.random() < 0.05 else "rate_limited"  # 0.1% time out
            output = {
                "category": rng.choice(CATEGORIES),
                "urgency": rng.choice(URGENCIES),
                "summary": f"Customer {n} asks about their invoice.",
            }
            inputs = {
                "sender": f"c{n}@example.com",
                "subject": f"Invoice {n}",
                "body": "Where is it?",
            }
            run_rows.append(
                {
                    "id": run_id,
                    "workflow": WORKFLOW,
                    "prompt_version": version,
                    "provider": "openai",
                    "model_requested": "gpt-4o-mini-2024-07-18",
                    "model_served": "gpt-4o-mini-2024-07-18",
                    "model_mismatch": False,
                    "allow_unpinned": False,
                    "status": "error" if failed else "ok",
                    "error_type": error_type if failed else None,
                    "review_policy": "all",
                    "review_route": "review",
                    "origin": "app",
                    "fallback": "review",
                    "attempt_count": 1,
                    "input_tokens": 120,
                    "output_tokens": 30,
                    "cached_tokens": 0,
                    "reasoning_tokens": 0,
                    "cost_usd": 0.0001,
                    "cost_source": "table",
                    "latency_ms": 400.0,
                    "started_at": at,
                    "finished_at": at,
                    "inputs": inputs,
                    "messages": [{"role": "user", "content": f"Subject: Invoice {n}"}],
                    "output": output,
                    "attempts": [],
                }
            )
            action = rng.choice(["approve"] * 9 + ["correct"]) if decided else None
            item_rows.append(
                {
                    "run_id": run_id,
                    "workflow": WORKFLOW,
                    "prompt_version": version,
                    "model_served": "gpt-4o-mini-2024-07-18",
                    "reason": "policy",
                    "route": "review",
                    "error_type": None,
                    "output": output,
                    "classes": [f"category={output['category']}", f"urgency={output['urgency']}"],
                    "state": STATES[action] if action else "pending",
                    "created_at": at,
                    "decided_by": "r00" if action else None,
                    "decided_at": at + timedelta(minutes=5) if action else None,
                    "final_output": output if action else None,
                }
            )
            if action:
                decision_rows.append(
                    {
                        "id": uuid7(),
                        "run_id": run_id,
                        "workflow": WORKFLOW,
                        "action": action,
                        "reviewer": "r00",
                        "decided_at": at + timedelta(minutes=5),
                        "output_before": output,
                        "output_after": output,
                        "route": "review",
                    }
                )
        with engine.begin() as c:
            c.execute(plain(runs).insert(), run_rows)
            c.execute(plain(review_items).insert(), item_rows)
            if decision_rows:
                c.execute(plain(review_decisions).insert(), decision_rows)
    if engine.dialect.name == "postgresql":
        with engine.begin() as c:
            c.exec_driver_sql("ANALYZE")


def make_project(folder: Path, reviewers: int) -> dict[str, str]:
    """`smallops init` in `folder` and the reviewers' password hashes in its smallops.toml."""
    subprocess.run(
        [*CLI, "init", str(folder)],
        check=True,
        capture_output=True,
        env=os.environ,
    )
    # One hash for everyone (scrypt is slow to make); each reviewer logs in under their own name.
    stored = hash_password(PASSWORD)
    names = {f"r{i:02d}": stored for i in range(reviewers)}
    lines = ["", "[reviewers]", *(f'{name} = "{h}"' for name, h in names.items())]
    toml = folder / "smallops.toml"
    toml.write_text(toml.read_text() + "\n".join(lines) + "\n")
    return names


def prompt_version(folder: Path) -> str:
    """The id of the workflow's current prompt version, as the server will compute it."""
    from smallops.project import Project

    return str(Project(folder).workflows[WORKFLOW].version.id)


def output_schema(folder: Path) -> dict[str, Any]:
    """The JSON schema of the workflow's output, as its prompt version records it."""
    from smallops.project import Project

    output = Project(folder).workflows[WORKFLOW].output
    assert output is not None
    return output.model_json_schema()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(folder: Path, url: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "SMALLOPS_DATABASE_URL": url, "SMALLOPS_SECRET_KEY": "k" * 64}
    server = subprocess.Popen(
        [*CLI, "serve", "--login", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if server.poll() is not None:
                raise SystemExit("smallops serve exited")
            time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(30)


class Timings:
    def __init__(self) -> None:
        self.decision: list[float] = []
        self.item: list[float] = []
        self.queue: list[float] = []
        self.decided: list[str] = []
        self.errors: Counter[str] = Counter()
        self.late = 0  # cycles that started more than one interval behind their schedule


async def log_in(client: httpx.AsyncClient, name: str) -> None:
    """As a browser: the login page, then the form posted with its CSRF token."""
    page = await client.get("/login")
    token = CSRF.search(page.text)
    assert token, "no CSRF token on the login page"
    login = {"csrf": token.group(1), "next": "/", "name": name, "password": PASSWORD}
    answer = await client.post("/login", data=login)
    assert answer.status_code == 303, (answer.status_code, answer.text[:300])


async def review(
    client: httpx.AsyncClient, stop_at: float, t: Timings, every: float = 0.0, offset: float = 0.0
) -> None:
    """One reviewer: open the queue, start reviewing, approve each item until the time is up;
    every 10th decision, reload the queue page. With `every` (seconds), a cycle starts on that
    schedule (from `offset`), at once if the last one ran late."""
    await asyncio.sleep(offset)
    next_at = time.monotonic()
    began = time.perf_counter()
    queue = await client.get("/")
    t.queue.append(time.perf_counter() - began)
    token = CSRF.search(queue.text)
    assert token
    answer = await client.post("/next", data={"csrf": token.group(1)})
    location = answer.headers.get("location", "")
    n = 0
    while location.startswith("/items/") and time.monotonic() < stop_at:
        if every:
            next_at += every
            wait = next_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -every:
                t.late += 1
        began = time.perf_counter()
        page = await client.get(location)
        t.item.append(time.perf_counter() - began)
        token = CSRF.search(page.text)
        if page.status_code != 200 or token is None:
            t.errors[f"item {page.status_code}"] += 1
            break
        run_id = location.split("?")[0].rsplit("/", 1)[1]
        began = time.perf_counter()
        answer = await client.post(f"/items/{run_id}/approve", data={"csrf": token.group(1)})
        t.decision.append(time.perf_counter() - began)
        if answer.status_code != 303:
            t.errors[f"approve {answer.status_code}"] += 1
            break
        t.decided.append(run_id)
        location = answer.headers.get("location", "")
        n += 1
        if n % 10 == 0:
            began = time.perf_counter()
            await client.get("/")
            t.queue.append(time.perf_counter() - began)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: list[float], q: float) -> float:
    return round(quantile(values, q) * 1000, 1)


async def drive(
    base: str, names: list[str], seconds: float, rate: float = 0.0
) -> tuple[Timings, float]:
    """Log everyone in (10 at a time: one address may fail 20 logins at once), then review."""
    t = Timings()
    clients = [httpx.AsyncClient(base_url=base, timeout=60) for _ in names]
    try:
        gate = asyncio.Semaphore(10)

        async def gated(client: httpx.AsyncClient, name: str) -> None:
            async with gate:
                await log_in(client, name)

        await asyncio.gather(*(gated(c, n) for c, n in zip(clients, names, strict=True)))
        began = time.monotonic()
        every = len(clients) / rate if rate else 0.0
        await asyncio.gather(
            *(
                review(c, began + seconds, t, every, every * i / len(clients))
                for i, c in enumerate(clients)
            )
        )
        return t, time.monotonic() - began
    finally:
        for client in clients:
            await client.aclose()


def load_figures(phase: str, rate: float, t: Timings, took: float) -> dict[str, Any]:
    """One phase's figures, each named after the phase."""
    figures = {
        "seconds": round(took, 1),
        "offered_per_s": rate or "as fast as answered",
        "late_cycles": t.late,
        "decisions_per_s": round(len(t.decided) / took, 1),
        "decision_p50_ms": ms(t.decision, 0.5),
        "decision_p95_ms": ms(t.decision, 0.95),
        "item_page_p50_ms": ms(t.item, 0.5),
        "item_page_p95_ms": ms(t.item, 0.95),
        "queue_page_p50_ms": ms(t.queue, 0.5),
        "queue_page_p95_ms": ms(t.queue, 0.95),
        "errors": dict(t.errors),
    }
    return {f"{phase}_{name}": value for name, value in figures.items()}


def verify(engine: Engine, decided: list[str]) -> dict[str, Any]:
    """Every decision recorded exactly once: one approve row per decision made, none twice."""
    with engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT run_id, count(*) FROM review_decisions WHERE action = 'approve' "
                "GROUP BY run_id"
            )
        ).all()
        items_decided = c.execute(
            text("SELECT count(*) FROM review_items WHERE state <> 'pending'")
        ).scalar_one()
    recorded: dict[str, int] = {str(run_id): int(count) for run_id, count in rows}
    made = Counter(decided)
    return {
        "decisions_made": len(decided),
        "decision_rows": sum(recorded.values()),
        "items_decided": items_decided,
        "decided_twice": sum(1 for count in recorded.values() if count > 1),
        "made_twice": sum(1 for count in made.values() if count > 1),
        "missing": sum(1 for run_id in made if run_id not in recorded),
        "exactly_once": (
            sum(recorded.values()) == len(decided) == items_decided
            and all(count == 1 for count in recorded.values())
            and set(recorded) == set(made)
        ),
    }


def count_statements(url: str, folder: Path, cycles: int = 5) -> dict[str, float]:
    """SQL statements of one open-and-approve cycle, in-process: GET the item page, POST
    approve (which claims the next item). Median over `cycles` cycles."""
    from starlette.testclient import TestClient

    from smallops.project import Project
    from smallops.review.desk import ReviewDesk
    from smallops.web.app import create_app

    os.environ["SMALLOPS_DATABASE_URL"] = url
    project = Project(folder)
    desk = ReviewDesk(project.engine(), project.workflows)
    app = create_app(desk, project.settings, require_login=False, reviewer="counter")
    counted: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        counted.append(statement)

    event.listen(desk.engine, "before_cursor_execute", count)
    per_cycle = []
    with TestClient(app, base_url="http://127.0.0.1") as client:
        token = CSRF.search(client.get("/").text)
        assert token
        answer = client.post("/next", data={"csrf": token.group(1)}, follow_redirects=False)
        location = answer.headers["location"]
        for _ in range(cycles):
            counted.clear()
            page = client.get(location)
            token = CSRF.search(page.text)
            assert token
            run_id = location.split("?")[0].rsplit("/", 1)[1]
            answer = client.post(
                f"/items/{run_id}/approve", data={"csrf": token.group(1)}, follow_redirects=False
            )
            assert answer.status_code == 303, answer.text[:300]
            location = answer.headers["location"]
            per_cycle.append(len(counted))
    event.remove(desk.engine, "before_cursor_execute", count)
    desk.engine.dispose()
    return {"statements_per_cycle": statistics.median(per_cycle)}


def time_stats(url: str, folder: Path, runs_count: int, rounds: int = 3) -> dict[str, float]:
    """`review stats` and the distribution-shift check over `runs_count` runs: median seconds."""
    from smallops.evals.shifts import distribution_shifts
    from smallops.project import Project
    from smallops.review.evidence import workflow_stats
    from smallops.storage.rollups import rebuild

    os.environ["SMALLOPS_DATABASE_URL"] = url
    project = Project(folder)
    engine = project.engine()
    workflow = project.workflows[WORKFLOW]
    seed(
        engine,
        runs_count,
        workflow.version.id,
        folder,
        decided=True,
        start=datetime.now(timezone.utc) - timedelta(days=10),
    )
    rebuild(engine)  # the seed writes runs directly: the shift check reads the label rollups
    stats_s, shift_s, shifts = [], [], []
    for _ in range(rounds):
        began = time.perf_counter()
        workflow_stats(engine, workflow)
        stats_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        shifts = distribution_shifts(engine, WORKFLOW)
        shift_s.append(time.perf_counter() - began)
    engine.dispose()
    return {
        "stats_runs": runs_count,
        "review_stats_s": round(statistics.median(stats_s), 3),
        "shifts_s": round(statistics.median(shift_s), 3),
        "shift_fields_tested": len(shifts),  # 0 would mean the check had nothing to read
    }


def explain(engine: Engine, what: str, read: Callable[[Engine], Any]) -> dict[str, str]:
    """EXPLAIN ANALYZE of the statement `read` executes: the indexes its plan names, and the
    time Postgres reports."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        read(engine)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = next((s, p) for s, p in seen if s.lstrip().startswith("SELECT"))
    with engine.connect() as connection:
        plan = "\n".join(
            row[0] for row in connection.exec_driver_sql("EXPLAIN ANALYZE " + statement, parameters)
        )
    indexes = sorted(set(re.findall(r"(?:Index|Index Only) Scan(?: Backward)? using (\w+)", plan)))
    bitmap = sorted(set(re.findall(r"Bitmap Index Scan on (\w+)", plan)))
    took = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return {
        f"{what}_plan": ", ".join(indexes + bitmap) or "no index",
        f"{what}_ms": took.group(1) if took else "?",
    }


def queue_reads(engine: Engine) -> dict[str, str]:
    """The pending queue of every workflow and `claim_next`'s read, under EXPLAIN ANALYZE."""
    from smallops.storage import review_log

    def queue(e: Engine) -> Any:
        with e.connect() as connection:
            return review_log.list_items(connection, None, "pending", 200)

    def claim(e: Engine) -> Any:
        with e.connect() as connection:
            now = datetime.now(timezone.utc)
            return review_log.next_free_item(connection, "r00", now, None, ())

    return {**explain(engine, "queue", queue), **explain(engine, "claim", claim)}


def logs_read(engine: Engine) -> dict[str, str]:
    """`smallops logs --status timeout`'s read (0.1% of the runs), under EXPLAIN ANALYZE."""
    from smallops.storage.queries import list_runs

    return explain(engine, "logs_status", lambda e: list_runs(e, status="timeout"))


def show(report: dict[str, Any], as_json: bool) -> None:
    """Print what has been measured since the last call (all of it at the end with --json)."""
    if as_json:
        return
    for key, value in report.items():
        print(f"{key:27} {value}", flush=True)
    report.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("SMALLOPS_TEST_DATABASE_URL"))
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--reviewers", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="open-and-approve cycles a second of the latency phase (0: no latency phase)",
    )
    parser.add_argument("--stats-runs", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.database_url:
        raise SystemExit("give --database-url or set SMALLOPS_TEST_DATABASE_URL (Postgres)")
    folder = Path(tempfile.mkdtemp(prefix="smallops-desk-"))
    report: dict[str, Any] = {"items": args.items, "reviewers": args.reviewers}
    shown: dict[str, Any] = {}

    def done(found: dict[str, Any]) -> None:
        report.update(found)
        shown.update(found)
        show(shown, args.json)

    try:
        names = make_project(folder / "ops", args.reviewers)
        with pg_schema(args.database_url, "desk") as url:
            engine = create_engine(url)
            ensure_schema(engine)
            began = time.perf_counter()
            seed(engine, args.items, prompt_version(folder / "ops"), folder / "ops")
            done({**report, "seed_s": round(time.perf_counter() - began, 1)})
            done(queue_reads(engine))
            if args.seconds > 0:
                port = free_port()
                decided: list[str] = []
                with serve(folder / "ops", url, port):
                    for phase, rate in (("capacity", 0.0), ("at_rate", args.rate)):
                        if phase == "at_rate" and not rate:
                            continue
                        t, took = asyncio.run(
                            drive(f"http://127.0.0.1:{port}", list(names), args.seconds, rate)
                        )
                        done(load_figures(phase, rate, t, took))
                        decided += t.decided
                done(verify(engine, decided))
                done(count_statements(url, folder / "ops"))
            if args.stats_runs:
                done(time_stats(url, folder / "ops", args.stats_runs))
                done(logs_read(engine))
            engine.dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
        return
    if args.seconds <= 0:
        return
    at_rate = report.get("at_rate_decision_p95_ms", float("nan"))
    ok = (
        report["capacity_decisions_per_s"] >= 100
        and args.rate >= 100
        and at_rate < 200
        and report.get("at_rate_queue_page_p95_ms", float("nan")) < 100
        and report["exactly_once"]
    )
    print(
        "targets (capacity >= 100 decisions/s; at 100/s decision p95 < 200 ms and queue page p95"
        " < 100 ms; exactly once):",
        "met" if ok else "NOT met",
    )


if __name__ == "__main__":
    main()
