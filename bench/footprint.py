"""Bytes per run in the log: the demo's email-triage workflow, run N times into a fresh database.

The workflow, prompt and fake model are those of `smallops demo`. The first 30 runs are the
demo's inbox with its scripted failures (a 429 that is retried, a non-JSON reply and a schema
break that are repaired, a refusal, a truncation, an outage); after that the inbox repeats with
the failures a model would repeat for the same email (the refusal, the truncation), without
the outage, whose retries only wait.

Printed: the SQLite file's size per run (after a WAL checkpoint), the share of `runs` and
`prompt_parts` with their indexes (SQLite's dbstat), the average stored length of the content
columns; with --pg-url, the same workflow into a scratch Postgres schema, measured with
pg_total_relation_size (TOAST and indexes included).

Run:  python bench/footprint.py [--runs 10000] [--pg-url postgresql://postgres@127.0.0.1/test]
It runs against whichever smallops is importable, so PYTHONPATH=/path/to/checkout/src measures
another checkout (before and after a change) with the same script.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from scratch import pg_schema
from sqlalchemy import create_engine, text

import smallops
from smallops.config import Settings
from smallops.demo import DemoModel, demo_inputs, load_inbox, scripted_failures
from smallops.project import Project
from smallops.providers.fake import FakeProvider
from smallops.scaffold import create_project
from smallops.storage import writer as writer_module
from smallops.storage.db import normalise_url

CONTENT = ("inputs", "messages", "output", "attempts")


def run_demo(folder: Path, runs: int, database_url: str | None) -> Counter[str]:
    """`runs` calls of the demo's workflow, logged to the project's SQLite file or to
    `database_url`; every record is written before this returns. The statuses, counted."""
    create_project(folder, "email-triage")
    env = {k: v for k, v in os.environ.items() if k != "SMALLOPS_DATABASE_URL"}
    if database_url:
        env["SMALLOPS_DATABASE_URL"] = database_url
    project = Project(folder, Settings.load(folder, env=env))
    inbox = load_inbox()
    model = DemoModel(scripted_failures(inbox))
    wf = project.workflow("email-triage").replace(
        model="fake:keyword-rules", provider=FakeProvider(model), settings=project.settings
    )
    inputs = demo_inputs(inbox)
    statuses: Counter[str] = Counter()
    for i in range(runs):
        if i == len(inputs):
            model.failures = {s: k for s, k in model.failures.items() if k != "outage"}
        statuses[wf.run(**inputs[i % len(inputs)]).status] += 1
    writer_module.reset()  # drain: every run in the database
    return statuses


def sqlite_figures(path: Path, runs: int) -> dict[str, float]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        logged = db.execute("SELECT count(*) FROM runs").fetchone()[0]
        if logged != runs:
            sys.exit(f"footprint: {logged} runs in the log after {runs} calls")
        tables = dict(
            db.execute(
                "SELECT coalesce(m.tbl_name, s.name), sum(s.pgsize) FROM dbstat s "
                "LEFT JOIN sqlite_master m ON m.name = s.name GROUP BY 1"
            ).fetchall()
        )
        lengths = db.execute(
            f"SELECT {', '.join(f'avg(length({c}))' for c in CONTENT)} FROM runs"
        ).fetchone()
    figures = {
        "file": path.stat().st_size / runs,
        "runs table": tables.get("runs", 0) / runs,
        "prompt_parts table": tables.get("prompt_parts", 0) / runs,
    }
    figures.update(
        {f"  {c} (average length)": n or 0 for c, n in zip(CONTENT, lengths, strict=True)}
    )
    return figures


def pg_figures(url: str, runs: int) -> dict[str, float]:
    engine = create_engine(normalise_url(url, Path.cwd()), isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text("VACUUM ANALYZE"))
        sizes = {
            table: c.execute(
                text("SELECT coalesce(pg_total_relation_size(to_regclass(:t)), 0)"), {"t": table}
            ).scalar_one()
            for table in ("runs", "prompt_parts")
        }
        columns = ", ".join(f"avg(pg_column_size({c}))" for c in CONTENT)
        lengths = c.execute(text(f"SELECT {columns} FROM runs")).one()
    engine.dispose()
    figures = {
        "runs + prompt_parts": (sizes["runs"] + sizes["prompt_parts"]) / runs,
        "runs (with TOAST and indexes)": sizes["runs"] / runs,
        "prompt_parts (with indexes)": sizes["prompt_parts"] / runs,
    }
    figures.update(
        {
            f"  {c} (average stored size)": float(n or 0)
            for c, n in zip(CONTENT, lengths, strict=True)
        }
    )
    return figures


def show(title: str, figures: dict[str, float]) -> None:
    print(f"\n{title}")
    for name, value in figures.items():
        print(f"  {name:<36} {value:>10,.0f} bytes per run")


def main() -> None:
    parser = argparse.ArgumentParser(description="bytes per logged run of the demo workflow")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--pg-url", help="also measure Postgres, in a scratch schema")
    args = parser.parse_args()
    print(f"smallops {smallops.__version__} from {Path(smallops.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="smallops-footprint-") as scratch:
        started = time.perf_counter()
        statuses = run_demo(Path(scratch) / "sqlite", args.runs, None)
        print(f"{args.runs:,} runs in {time.perf_counter() - started:.1f} s: {dict(statuses)}")
        db = Path(scratch) / "sqlite" / ".smallops" / "smallops.db"
        figures = sqlite_figures(db, args.runs)  # after a checkpoint: the whole file
        show(f"SQLite ({db.stat().st_size / 1e6:.1f} MB file)", figures)
        if args.pg_url:
            with pg_schema(args.pg_url, "footprint") as url:
                run_demo(Path(scratch) / "postgres", args.runs, url)
                show("Postgres", pg_figures(url, args.runs))


if __name__ == "__main__":
    main()
