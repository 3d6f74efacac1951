"""What smallops adds to an LLM call, measured against the official openai SDK on a local upstream.

The upstream is nginx answering a fixed chat completion in tens of microseconds (bench/
nginx_upstream.conf, started here if nothing listens on 127.0.0.1:8912), so a client path's own
cost shows. The machine is shared and noisy: paths are compared as ratios taken in the same run,
their order alternating from round to round, and medians are quoted.

1. Sequential overhead: N raw-SDK calls (the same request smallops sends: model, messages, strict
   json_schema response_format; the content parsed into Triage) against N `Workflow.run` calls.
   Targets: median overhead <= 0.25 ms, p99 overhead <= 1 ms.
2. Concurrent throughput: 64 calls in flight, `openai.AsyncOpenAI` against `Workflow.arun`.
   Target: >= 90% of raw. Then, after `smallops.flush()`, one logged row per smallops call made.
3. Writer alone: a spool of rows encoded from a real call's record, replayed into a fresh SQLite
   file and a fresh Postgres schema. Targets: >= 20,000 runs/s SQLite, >= 10,000 runs/s Postgres.
4. Peers (--peers): the shared peers.py, one subprocess per client importable by --peers-python,
   alternating with `Workflow.run` measured in-process the same way; ratios to the peers' `raw`.
5. Guards: sequential calls with request and token rate limits and the circuit breaker, in
   memory and in Redis, against the raw SDK. Target: in memory, inside the targets of 1.
6. Export on: sequential calls with the OpenTelemetry export off, sending to a local OTLP/HTTP
   receiver that answers 200, and pointed at a closed port (a collector that is down), against
   the raw SDK. Target: each inside the targets of 1. For comparison, the same export from a
   child process (SMALLOPS_OTEL_PROCESS=1) instead of a thread of the calling process.
   `--export-only` runs this section alone.

Run: .venv/bin/python bench/overhead.py [--calls 1000] [--rounds 5] [--concurrent-calls 3000]
     [--writer-rows 20000] [--pg-url URL] [--skip-pg] [--peers [--peers-python PY]] [--json]
     [--redis-url URL] [--skip-redis] [--skip-guards] [--skip-export] [--export-only]
Needs nginx (apt-get install -y nginx-light), Postgres at --pg-url unless --skip-pg, and Redis
at --redis-url unless --skip-redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import openai
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel
from scratch import pg_schema
from sqlalchemy import text

import smallops
from smallops import Settings, Workflow
from smallops.config import ProviderConfig
from smallops.ids import uuid7
from smallops.records import RunRecord
from smallops.redact import Redactor
from smallops.storage import writer as writer_module
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.rows import Parts, prompt_row, run_row
from smallops.storage.spool import Spool
from smallops.storage.store import RowBatch, RowStore, land

HERE = Path(__file__).resolve().parent
HOST, PORT = "127.0.0.1", 8912
BASE_URL = f"http://{HOST}:{PORT}/v1"
MODEL = "gpt-4o-mini-2024-07-18"
SUBJECT, BODY = "invoice", "Hi, where is my invoice for October?"
PROMPT = "[system]\nClassify the email.\n[user]\nSubject: {{ subject }}\n\n{{ body }}"
CONCURRENCY = 64
# name: (target, higher is better, how it is shown)
TARGETS = {
    "overhead_ms": (0.25, False, "<= 0.25 ms"),
    "p99_overhead_ms": (1.0, False, "<= 1 ms"),
    "throughput": (0.9, True, ">= 90%"),
    "sqlite": (20_000, True, ">= 20,000 runs/s"),
    "postgres": (10_000, True, ">= 10,000 runs/s"),
}
PEERS = {
    "httpx": "httpx",
    "raw": "openai",
    "raw_sqlite": "openai",
    "raw_pg": "openai, psycopg",
    "litellm": "litellm",
    "langfuse": "langfuse",
    "llm": "llm, sqlite_utils",
}
CALLS: Counter[str] = Counter()  # calls made per path, warm-ups included


class Triage(BaseModel):
    category: Literal["billing", "support", "sales", "spam", "other"]
    urgency: Literal["low", "normal", "high"]
    summary: str


MESSAGES: Any = [
    {"role": "system", "content": "Classify the email."},
    {"role": "user", "content": f"Subject: {SUBJECT}\n\n{BODY}"},
]
RESPONSE_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "Triage", "schema": to_strict_json_schema(Triage), "strict": True},
}


def summary(ns: Sequence[int]) -> dict[str, float]:
    """Median and p99 in µs (p99 taken as peers.py takes it: the value at index int(0.99 n))."""
    us = sorted(t / 1000 for t in ns)
    return {"median_us": statistics.median(us), "p99_us": us[min(len(us) - 1, int(0.99 * len(us)))]}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[f"{c:,.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for line in [list(headers), *cells]:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


def verdict(name: str, value: float) -> str:
    target, higher, shown = TARGETS[name]
    if value >= target if higher else value <= target:
        return f"target {shown}: PASS"
    return f"target {shown}: MISS by {abs(value - target) / target:.0%}"


def listening() -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, PORT)) == 0


@contextlib.contextmanager
def upstream() -> Iterator[None]:
    """Use whatever listens on the port, else start nginx from bench/ and stop it afterwards."""
    if listening():
        yield
        return
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        sys.exit("nginx is not installed: apt-get install -y nginx-light")
    prefix = Path(tempfile.mkdtemp(prefix="smallops-nginx-"))
    shutil.copy(HERE / "nginx_upstream.conf", prefix)
    command = [nginx, "-e", "stderr", "-p", str(prefix), "-c", str(prefix / "nginx_upstream.conf")]
    subprocess.run(command, check=True)
    try:
        for _ in range(100):
            if listening():
                break
            time.sleep(0.05)
        else:
            sys.exit(f"nginx started but nothing listens on {HOST}:{PORT}")
        yield
    finally:
        subprocess.run([*command, "-s", "quit"], check=False, capture_output=True)
        for _ in range(100):  # nginx removes its pid file as it exits
            if not (prefix / "nginx.pid").exists():
                break
            time.sleep(0.05)
        shutil.rmtree(prefix, ignore_errors=True)


def make_workflow(
    root: Path, name: str = "email-triage", redis_url: str | None = None, **guards: Any
) -> Workflow[Triage]:
    (root / "triage.prompt").write_text(PROMPT)
    settings = Settings(
        root=root,
        database_url=f"sqlite:///{root}/log.db",
        providers={"openai": ProviderConfig("openai", "openai", base_url=BASE_URL)},
        redis_url=redis_url,
    )
    return Workflow(
        name,
        model=f"openai:{MODEL}",
        prompt="triage.prompt",
        output=Triage,
        review="none",
        fallback="review",
        settings=settings,
        base_dir=root,
        **guards,
    )


#: Limits high enough never to refuse: what is measured is the cost of checking them.
GUARDS = {"rate_limit": "1000000/minute", "token_limit": "1000000000/minute"}


def guards_cost(root: Path, n: int, rounds: int, redis_url: str | None) -> dict[str, Any]:
    """Sequential calls with the guards in memory and in Redis, alternating with the raw SDK.

    "smallops" is the default workflow (its circuit breaker in memory); "+memory guards" adds
    a request and a token rate limit; "+redis guards" keeps limits and breaker in Redis.
    """
    client = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
    variants = {"raw": lambda: raw_call(client)}
    flows = {
        "smallops": make_workflow(root, "guards-none"),
        "+memory guards": make_workflow(root, "guards-memory", **GUARDS),
    }
    if redis_url:
        flows["+redis guards"] = make_workflow(
            root, f"guards-redis-{os.getpid()}", redis_url, **GUARDS
        )
    for name, flow in flows.items():
        variants[name] = lambda flow=flow: flow.run(subject=SUBJECT, body=BODY)
    for name, fn in variants.items():
        timed(name, fn, max(50, n // 10))
    medians: dict[str, list[float]] = {name: [] for name in variants}
    p99s: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in alternate(r, list(variants)):
            gc.collect()
            got = summary(timed(name, variants[name], n))
            medians[name].append(got["median_us"])
            p99s[name].append(got["p99_us"])
    raw_med, raw_p99 = statistics.median(medians["raw"]), statistics.median(p99s["raw"])
    rows, out = [], {}
    for name in variants:
        med, p99 = statistics.median(medians[name]), statistics.median(p99s[name])
        out[name] = {
            "median_us": med,
            "p99_us": p99,
            "overhead_ms": (med - raw_med) / 1000,
            "p99_overhead_ms": (p99 - raw_p99) / 1000,
        }
        rows.append(
            [
                name,
                f"{med:,.0f}",
                f"{p99:,.0f}",
                f"{(med - raw_med) / 1000:.3f}",
                f"{(p99 - raw_p99) / 1000:.3f}",
            ]
        )
    print(
        f"\n5. Guards: {rounds} rounds x {n} sequential calls per path (µs per call; "
        "overheads are medians over rounds against the raw SDK)"
    )
    table(["path", "median µs", "p99 µs", "overhead ms", "p99 ovh ms"], rows)
    memory = out["+memory guards"]
    print(
        f"with in-memory guards: median overhead {memory['overhead_ms']:.3f} ms "
        f"({verdict('overhead_ms', memory['overhead_ms'])}), p99 overhead "
        f"{memory['p99_overhead_ms']:.3f} ms "
        f"({verdict('p99_overhead_ms', memory['p99_overhead_ms'])})"
    )
    return out


@contextlib.contextmanager
def otlp_receiver() -> Iterator[str]:
    """An OTLP/HTTP endpoint on 127.0.0.1 that reads each request and answers 200 (an empty
    ExportTraceServiceResponse); yields its base URL and counts the requests it took. It runs
    in a process of its own, as a collector does, so its work is not charged to the calls."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    counter = context.Value("i", 0)
    ready = context.Queue()
    process = context.Process(target=_serve_otlp, args=(counter, ready), daemon=True)
    process.start()
    try:
        yield f"http://127.0.0.1:{ready.get(timeout=30)}"
    finally:
        CALLS["otlp requests"] += counter.value
        process.terminate()
        process.join(5)


def _serve_otlp(counter: Any, ready: Any) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            with counter.get_lock():
                counter.value += 1
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ready.put(server.server_address[1])
    server.serve_forever()


def settle(export: Any) -> None:
    """Between two timed blocks: the writer commits what it holds and the block's export sends
    what it has built, so neither lands in the next path's timings."""
    writer_module.flush_all()
    if export is not None and not export.flush(60):
        raise SystemExit("error: an export did not finish its work in 60 s; the timings are void")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def export_cost(root: Path, n: int, rounds: int) -> dict[str, Any]:
    """Sequential calls with the span export off, on (a receiver answering 200) and pointed at
    a closed port, alternating with the raw SDK. Each variant is the process's export in turn
    (the writer hands committed runs to whichever is current); after each block the writer
    and that block's export are flushed, outside the timings, so one path's work never lands in
    another's (a collector that is down gives up on a request after a second)."""
    from smallops.storage import otel_export

    client = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
    wf = make_workflow(root, "export")
    exports: dict[str, Any] = {}
    with otlp_receiver() as receiver:
        saved = os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        try:
            for name, url, kind in (
                ("export on", receiver, otel_export.SpanExport),
                (
                    "export, collector down",
                    f"http://127.0.0.1:{closed_port()}",
                    # refused requests give up after a second: a flush does not wait out retries
                    functools.partial(otel_export.SpanExport, timeout=1.0),
                ),
                ("export on, from a child process", receiver, otel_export.ProcessExport),
            ):
                os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
                exports[name] = kind()
        finally:
            os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            if saved is not None:
                os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = saved

        def variant(export: Any) -> Callable[[], Any]:
            def call() -> Any:
                otel_export._export = export
                return wf.run(subject=SUBJECT, body=BODY)

            return call

        variants: dict[str, Callable[[], Any]] = {
            "raw": lambda: raw_call(client),
            "export off": variant(None),
            **{name: variant(export) for name, export in exports.items()},
        }
        try:
            for name, fn in variants.items():
                timed(name, fn, max(50, n // 10))
                settle(exports.get(name))
            medians: dict[str, list[float]] = {name: [] for name in variants}
            p99s: dict[str, list[float]] = {name: [] for name in variants}
            for r in range(rounds):
                for name in alternate(r, list(variants)):
                    gc.collect()
                    got = summary(timed(name, variants[name], n))
                    settle(exports.get(name))
                    medians[name].append(got["median_us"])
                    p99s[name].append(got["p99_us"])
        finally:
            otel_export._export = None
            for export in exports.values():
                export.flush(60)
            for export in exports.values():
                export.close(1.0)
    raw_med, raw_p99 = statistics.median(medians["raw"]), statistics.median(p99s["raw"])
    rows, out = [], {}
    for name in variants:
        med, p99 = statistics.median(medians[name]), statistics.median(p99s[name])
        out[name] = {
            "median_us": med,
            "p99_us": p99,
            "overhead_ms": (med - raw_med) / 1000,
            "p99_overhead_ms": (p99 - raw_p99) / 1000,
        }
        rows.append(
            [
                name,
                f"{med:,.0f}",
                f"{p99:,.0f}",
                f"{(med - raw_med) / 1000:.3f}",
                f"{(p99 - raw_p99) / 1000:.3f}",
            ]
        )
    on, down = exports["export on"], exports["export, collector down"]
    child = exports["export on, from a child process"]
    out["spans"] = {
        "sent": on.sent,
        "dropped": on.dropped,
        "down_dropped": down.dropped,
        "otlp_requests": CALLS["otlp requests"],
    }
    print(
        f"\n6. Export on: {rounds} rounds x {n} sequential calls per path (µs per call; "
        "overheads are medians over rounds against the raw SDK)"
    )
    table(["path", "median µs", "p99 µs", "overhead ms", "p99 ovh ms"], rows)
    print(
        f"spans sent {on.sent:,} from the thread and {child.sent:,} by the child process, in "
        f"{CALLS['otlp requests']:,} requests ({on.dropped + child.dropped:,} dropped); "
        f"collector down: {down.dropped:,} spans dropped and counted"
    )
    for name in exports:
        got = out[name]
        print(
            f"{name}: median overhead {got['overhead_ms']:.3f} ms "
            f"({verdict('overhead_ms', got['overhead_ms'])}), p99 overhead "
            f"{got['p99_overhead_ms']:.3f} ms "
            f"({verdict('p99_overhead_ms', got['p99_overhead_ms'])})"
        )
    return out


def raw_call(client: openai.OpenAI) -> Triage:
    resp = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format=RESPONSE_FORMAT
    )
    return Triage.model_validate_json(resp.choices[0].message.content or "")


async def araw_call(client: openai.AsyncOpenAI) -> Triage:
    resp = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format=RESPONSE_FORMAT
    )
    return Triage.model_validate_json(resp.choices[0].message.content or "")


def paths(wf: Workflow[Triage]) -> dict[str, Callable[[], Any]]:
    client = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
    return {"raw": lambda: raw_call(client), "smallops": lambda: wf.run(subject=SUBJECT, body=BODY)}


def timed(name: str, call: Callable[[], Any], n: int) -> list[int]:
    """Nanoseconds per call for n calls."""
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        call()
        out.append(time.perf_counter_ns() - t)
    CALLS[name] += n
    return out


def capture_record(wf: Workflow[Triage]) -> RunRecord:
    """One real call's record, as the request path hands it to the writer."""
    writer, seen = wf.plan().writer, list[RunRecord]()
    submit = writer.submit

    def keep(record: RunRecord) -> None:
        seen.append(record)
        submit(record)

    writer.submit = keep
    try:
        result = wf.run(subject=SUBJECT, body=BODY)
    finally:
        del writer.submit
    CALLS["smallops"] += 1
    if result.status != "auto":
        sys.exit(f"the first smallops call did not succeed: {result}")
    return seen[0]


def alternate(r: int, names: Sequence[str]) -> list[str]:
    """Round r's order: rotated by one each round, so no path always goes first."""
    return [*names[r % len(names) :], *names[: r % len(names)]]


def sequential(wf: Workflow[Triage], n: int, rounds: int) -> dict[str, Any]:
    fns = paths(wf)
    for name, fn in fns.items():
        timed(name, fn, max(50, n // 10))
    per_round: list[list[Any]] = []
    for r in range(rounds):
        got = {}
        for name in alternate(r, list(fns)):
            gc.collect()
            got[name] = summary(timed(name, fns[name], n))
        raw, ours = got["raw"], got["smallops"]
        ovh = (ours["median_us"] - raw["median_us"]) / 1000
        p99 = (ours["p99_us"] - raw["p99_us"]) / 1000
        ratio = ours["median_us"] / raw["median_us"]
        per_round.append([r + 1, "/".join(got), *raw.values(), *ours.values(), ovh, p99, ratio])
    keys = ("overhead_ms", "p99_overhead_ms", "ratio")
    overall = {k: statistics.median(row[6 + i] for row in per_round) for i, k in enumerate(keys)}
    print(f"\n1. Sequential overhead: {rounds} rounds x {n} calls per path (µs per call)")
    headers = "round,order,raw med,raw p99,smallops med,smallops p99,overhead ms,p99 ovh ms,ratio"
    table(headers.split(","), per_round)
    ovh, p99 = overall["overhead_ms"], overall["p99_overhead_ms"]
    print(
        f"median over rounds: overhead {ovh:.3f} ms ({verdict('overhead_ms', ovh)}); p99 "
        f"overhead {p99:.3f} ms ({verdict('p99_overhead_ms', p99)}); "
        f"smallops/raw {overall['ratio']:.3f}"
    )
    return {"rounds": per_round, **overall}


async def throughput(name: str, call: Callable[[], Awaitable[Any]], m: int) -> float:
    """Calls per second, CONCURRENCY workers sharing m calls."""
    per, extra = divmod(m, CONCURRENCY)

    async def worker(k: int) -> None:
        for _ in range(k):
            await call()

    t = time.perf_counter_ns()
    await asyncio.gather(*(worker(per + (i < extra)) for i in range(CONCURRENCY)))
    CALLS[name] += m
    return m / ((time.perf_counter_ns() - t) / 1e9)


async def concurrent_rounds(wf: Workflow[Triage], m: int, rounds: int) -> list[list[Any]]:
    key = os.environ["OPENAI_API_KEY"]
    client = openai.AsyncOpenAI(base_url=BASE_URL, api_key=key, max_retries=0)
    fns: dict[str, Callable[[], Awaitable[Any]]] = {
        "raw": lambda: araw_call(client),
        "smallops": lambda: wf.arun(subject=SUBJECT, body=BODY),
    }
    for name, fn in fns.items():
        await throughput(name, fn, CONCURRENCY * 4)
    out = []
    for r in range(rounds):
        got = {}
        for name in alternate(r, list(fns)):
            gc.collect()
            got[name] = await throughput(name, fns[name], m)
        out.append(
            [r + 1, "/".join(got), got["raw"], got["smallops"], got["smallops"] / got["raw"]]
        )
    await client.close()
    return out


def concurrent(wf: Workflow[Triage], m: int, rounds: int) -> dict[str, Any]:
    per_round = asyncio.run(concurrent_rounds(wf, m, rounds))
    ratio = statistics.median(row[4] for row in per_round)
    print(f"\n2. Concurrent throughput: {CONCURRENCY} in flight, {m} calls per path per round")
    table(["round", "order", "raw calls/s", "smallops calls/s", "smallops/raw"], per_round)
    print(f"median ratio {ratio:.1%} ({verdict('throughput', ratio)})")
    t = time.perf_counter()
    flushed = smallops.flush(120)
    flush_ms = (time.perf_counter() - t) * 1000
    with get_engine(normalise_url(wf.settings.database_url, wf.settings.root)).connect() as c:
        rows = c.execute(text("SELECT count(*) FROM runs")).scalar_one()
    made, spooled = CALLS["smallops"], wf.plan().writer.spooled
    lost = "none lost" if rows == made else "ROWS MISSING"
    print(
        f"flush took {flush_ms:.0f} ms (complete: {flushed}); rows in the log {rows:,}, "
        f"smallops calls made {made:,}, spooled {spooled}: {lost}"
    )
    return {"rounds": per_round, "ratio": ratio, "rows": rows, "calls": made, "spooled": spooled}


def make_spool(record: RunRecord, n: int, folder: Path) -> tuple[Path, float]:
    """n rows encoded from copies of a real record and spooled in writer-sized batches;
    returns the spool file and the encoding rate (runs/s)."""
    redact = Redactor.from_environment()
    records = [
        dataclasses.replace(record, id=uuid7(), started_at=record.started_at + i / 1000)
        for i in range(n)
    ]
    parts = Parts()  # what the runs repeat of their prompt version, kept once (prompt_parts.py)
    t = time.perf_counter()
    rows = [run_row(r, redact, None, parts) for r in records]
    encode_rate = n / (time.perf_counter() - t)
    spool, batch = Spool(folder), writer_module.BATCH
    for i in range(0, n, batch):  # each batch with its runs' parts, as the writer makes them
        prompts = [prompt_row(record.facts.prompt)] if i == 0 else []
        shared = list(parts.values())
        spool.append(RowBatch(runs=list(rows[i : i + batch]), prompts=prompts, parts=shared))
    spool.close()
    return next(folder.glob("*.jsonl")), encode_rate


def refused(rows: RowBatch, reason: str) -> None:
    sys.exit(f"writer: the database refused {len(rows.runs)} benchmark runs: {reason}")


def replay_into(url: str, spool_file: Path, scratch: Path) -> tuple[float, int]:
    """Replay a copy of the spool into the empty database at url: (runs/s, rows counted)."""
    engine = get_engine(url)
    ensure_schema(engine)  # migrations are not part of the timing
    folder = scratch / uuid7()
    folder.mkdir()
    shutil.copy(spool_file, folder)
    store = RowStore(engine)
    gc.collect()
    t = time.perf_counter()
    replayed = Spool(folder).replay(lambda rows: land(store, rows, refused))
    rate = replayed / (time.perf_counter() - t)
    store.close()
    with engine.connect() as c:
        rows = c.execute(text("SELECT count(*) FROM runs")).scalar_one()
    engine.dispose()
    shutil.rmtree(folder)
    return rate, rows


PERSONAL_EMAIL = (
    "Hello, my card was charged twice for invoice 2025-118. Call me on +44 20 7946 0958 "
    "or write to jane.doe@example.com. "
) * 12  # about 1.5 KB


def redacted_encode_rate(record: RunRecord, n: int) -> float:
    """run_row with content="redacted" (personal data masked) on n records whose texts all
    differ, so the mask cache helps only with what every run repeats (the system prompt)."""
    redact = Redactor.from_environment()
    facts = dataclasses.replace(record.facts, content="redacted")
    records = []
    for i in range(n):
        body = f"{PERSONAL_EMAIL}#{i}"
        user = {"role": "user", "content": f"Subject: {SUBJECT}\n\n{body}"}
        messages = [*(record.messages or [])[:-1], user]
        attempts = [
            {**a, "request": {**a["request"], "messages": messages}} for a in record.attempts
        ]
        records.append(
            dataclasses.replace(
                record,
                facts=facts,
                id=uuid7(),
                inputs={"subject": SUBJECT, "body": body},
                messages=messages,
                attempts=attempts,
            )
        )
    t = time.perf_counter()
    for r in records:
        run_row(r, redact, None, Parts())
    return n / (time.perf_counter() - t)


def writer_alone(
    record: dict[str, Any], n: int, rounds: int, pg_url: str | None, scratch: Path
) -> dict[str, Any]:
    spool_file, encode_rate = make_spool(record, n, scratch / "source")
    targets = ["sqlite", "postgres"] if pg_url else ["sqlite"]
    rates: dict[str, list[float]] = {t: [] for t in targets}
    for r in range(rounds):
        for target in alternate(r, targets):
            with contextlib.ExitStack() as stack:
                url = (
                    f"sqlite:///{scratch}/replay-{r}.db"
                    if target == "sqlite"
                    else stack.enter_context(pg_schema(pg_url or "", "bench"))
                )
                rate, rows = replay_into(url, spool_file, scratch)
            if rows != n:
                sys.exit(f"writer: {target} holds {rows} rows after replaying {n}")
            rates[target].append(rate)
    redacted_rate = redacted_encode_rate(record, min(n, 5000))
    out = {
        "encode_runs_s": encode_rate,
        "encode_redacted_runs_s": redacted_rate,
        **{t: statistics.median(v) for t, v in rates.items()},
    }
    print(
        f"\n3. Writer alone: {n:,} spooled runs ({spool_file.stat().st_size / n / 1024:.1f} KiB "
        f"each) replayed per round, {rounds} rounds; row counts verified"
    )
    table(
        ["database", "median runs/s", "rounds", ""],
        [
            [t, f"{out[t]:,.0f}", " ".join(f"{x:,.0f}" for x in v), verdict(t, out[t])]
            for t, v in rates.items()
        ]
        + ([] if pg_url else [["postgres", "skipped", "", ""]]),
    )
    print(
        f"(for reference, not timed above: encoding records into rows with run_row, which the "
        f"writer thread does before each insert, ran at {encode_rate:,.0f} runs/s; with "
        f'content="redacted" and a distinct 1.5 KB email full of personal data per run, at '
        f"{redacted_rate:,.0f} runs/s, {1000 / redacted_rate:.2f} ms per run)"
    )
    return out


def run_peer(args: argparse.Namespace, client: str) -> dict[str, Any]:
    pg_url = args.pg_url.replace("+psycopg", "")
    env = dict(os.environ, MOCK_BASE=BASE_URL, PG_URL=pg_url, LITELLM_LOCAL_MODEL_COST_MAP="True")
    command = [args.peers_python, args.peers_script, client, str(args.calls)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def importable(python: str, modules: str) -> bool:
    probe = [python, "-c", f"import {modules}"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def peers(wf: Workflow[Triage], args: argparse.Namespace) -> dict[str, Any]:
    if not Path(args.peers_script).is_file():
        print(f"\n4. Peers: skipped, no peers script at {args.peers_script}")
        return {}
    python = args.peers_python
    wanted = [c for c in PEERS if not (args.skip_pg and c == "raw_pg")]
    clients = [c for c in wanted if importable(python, PEERS[c])]
    ours, n = paths(wf)["smallops"], args.calls
    got: dict[str, list[dict[str, Any]]] = {c: [] for c in ["smallops", *clients]}
    for r in range(args.peer_rounds):
        for name in alternate(r, list(got)):
            gc.collect()
            if name == "smallops":  # peers.py's own rule: warm up, then n timed calls
                timed(name, ours, max(50, n // 10))
                got[name].append(summary(timed(name, ours, n)))
            else:
                got[name].append(run_peer(args, name))
    print(
        f"\n4. Peers: {args.peer_rounds} rounds x {n} calls; each peer in its own process "
        f"({python}), smallops in this one; x raw = median / the peers' raw median in the same "
        f"round (the peers' raw sends no response_format and parses nothing)"
    )
    if skipped := [c for c in PEERS if c not in clients]:
        print(f"not importable there, skipped: {', '.join(skipped)}")
    raw_medians = [g.get("median_us") for g in got.get("raw", [])]
    out, rows = {}, []
    for name, runs in got.items():
        ok = [
            (g, raw)
            for g, raw in zip(runs, raw_medians or [None] * len(runs), strict=True)
            if "median_us" in g
        ]
        if not ok:
            rows.append([name, "failed", "", runs[0].get("error", "")[:60]])
            continue
        med, p99 = (statistics.median(g[k] for g, _ in ok) for k in ("median_us", "p99_us"))
        ratios = [g["median_us"] / raw for g, raw in ok if raw]
        x_raw = statistics.median(ratios) if ratios else None
        out[name] = {"median_us": med, "p99_us": p99, "x_raw": x_raw}
        rows.append([name, f"{med:,.0f}", f"{p99:,.0f}", f"{out[name]['x_raw'] or 0:.2f}"])
    table(["client", "median µs", "p99 µs", "x raw"], rows)
    return out


def report(results: dict[str, Any]) -> None:
    seq, conc, wr = results["sequential"], results["concurrent"], results["writer"]
    checks = [
        ("sequential median overhead", "{:.3f} ms", "overhead_ms", seq["overhead_ms"]),
        ("sequential p99 overhead", "{:.3f} ms", "p99_overhead_ms", seq["p99_overhead_ms"]),
        ("concurrent throughput / raw", "{:.1%}", "throughput", conc["ratio"]),
        *[(f"writer replay, {db}", "{:,.0f} runs/s", db, wr[db]) for db in wr if db in TARGETS],
    ]
    rows = [[label, form.format(value), verdict(key, value)] for label, form, key, value in checks]
    lost = "none lost" if conc["rows"] == conc["calls"] else "ROWS MISSING"
    rows.insert(3, ["rows logged / calls made", f"{conc['rows']:,} / {conc['calls']:,}", lost])
    print("\nSummary")
    table(["measure", "value", ""], rows)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="smallops per-call overhead and writer throughput")
    p.add_argument("--calls", type=int, default=1000, help="sequential calls per path per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrent-calls", type=int, default=3000, help="per path per round")
    p.add_argument("--writer-rows", type=int, default=20_000)
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--skip-pg", action="store_true", help="no Postgres (writer, raw_pg peer)")
    p.add_argument("--peers", action="store_true", help="also run the shared peers.py")
    p.add_argument("--peers-script", default="/work/shared/bench/peers.py")
    p.add_argument("--peers-python", default=sys.executable, help="one with the peers' packages")
    p.add_argument("--peer-rounds", type=int, default=3)
    p.add_argument("--json", action="store_true", help="tables to stderr, results as JSON")
    p.add_argument("--skip-guards", action="store_true", help="no guards section")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--skip-redis", action="store_true", help="guards in memory only")
    p.add_argument("--skip-export", action="store_true", help="no OpenTelemetry export section")
    p.add_argument("--export-only", action="store_true", help="only the export section (6)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    scratch = Path(tempfile.mkdtemp(prefix="smallops-bench-"))
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with upstream(), quiet:
            wf = make_workflow(scratch)
            record = capture_record(wf)
            print(
                f"smallops {smallops.__version__}, openai {openai.__version__}, Python "
                f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, upstream {BASE_URL}"
            )
            if args.export_only:
                results = {"export": export_cost(scratch, args.calls, args.rounds)}
            else:
                results = {
                    "sequential": sequential(wf, args.calls, args.rounds),
                    "concurrent": concurrent(wf, args.concurrent_calls, args.rounds),
                }
                pg_url = None if args.skip_pg else args.pg_url
                results["writer"] = writer_alone(
                    record, args.writer_rows, args.rounds, pg_url, scratch
                )
                if args.peers:
                    results["peers"] = peers(wf, args)
                if not args.skip_guards:
                    redis_url = None if args.skip_redis else args.redis_url
                    results["guards"] = guards_cost(scratch, args.calls, args.rounds, redis_url)
                if not args.skip_export:
                    results["export"] = export_cost(scratch, args.calls, args.rounds)
                report(results)
    finally:
        writer_module.reset()
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
