"""What smallops adds to an LLM call, measured against the official openai SDK on a local upstream.

The upstream is nginx answering a fixed chat completion in tens of microseconds (bench/
nginx_upstream.conf, started here if nothing listens on 127.0.0.1:8912), so a client path's own
cost shows. The machine is shared and noisy, so paths are compared as ratios taken in the same
run, alternating their order, and medians are quoted.

1. Sequential overhead: N raw-SDK calls (same request: model, messages, strict json_schema
   response_format; the JSON content parsed into Triage) against N `Workflow.run` calls, per round.
   Targets: median overhead <= 0.25 ms, p99 overhead <= 1 ms.
2. Concurrent throughput: 64 concurrent asyncio calls, `openai.AsyncOpenAI` against
   `Workflow.arun`; then every smallops call must be a row in the log. Target: >= 90% of raw.
3. Writer alone: a spool of realistic rows (encoded from a real call's record) replayed into a
   fresh SQLite file and a fresh Postgres schema. Targets: >= 20,000 runs/s SQLite, >= 10,000 PG.
4. Peers (--peers): /work/shared/bench/peers.py run per importable client in a subprocess,
   alternating with `Workflow.run` measured in-process the same way; ratios to the peers' raw SDK.

Run: .venv/bin/python bench/overhead.py [--calls 1000] [--rounds 5] [--concurrent-calls 3000]
     [--writer-rows 20000] [--pg-url URL] [--skip-pg] [--peers [--peers-python PY]] [--json]
Needs nginx (apt-get install -y nginx-light) and, unless --skip-pg, a Postgres at --pg-url.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

import smallops
from smallops import Settings, Workflow
from smallops.config import ProviderConfig
from smallops.ids import uuid7
from smallops.redact import Redactor
from smallops.storage import writer as writer_module
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.rows import prompt_row, run_row
from smallops.storage.spool import Spool
from smallops.storage.store import RowStore

HERE = Path(__file__).resolve().parent
HOST, PORT = "127.0.0.1", 8912
BASE_URL = f"http://{HOST}:{PORT}/v1"
MODEL = "gpt-4o-mini-2024-07-18"
SUBJECT, BODY = "invoice", "Hi, where is my invoice for October?"
PROMPT = "[system]\nClassify the email.\n[user]\nSubject: {{ subject }}\n\n{{ body }}"
CONCURRENCY = 64
PEERS = {"httpx": ["httpx"], "raw": ["openai"], "raw_sqlite": ["openai"],
         "raw_pg": ["openai", "psycopg"], "litellm": ["litellm"], "langfuse": ["langfuse"],
         "llm": ["llm", "sqlite_utils"]}
CALLS: Counter[str] = Counter()  # calls made per path, warm-ups included


class Triage(BaseModel):
    category: Literal["billing", "support", "sales", "spam", "other"]
    urgency: Literal["low", "normal", "high"]
    summary: str


MESSAGES: Any = [{"role": "system", "content": "Classify the email."},
                 {"role": "user", "content": f"Subject: {SUBJECT}\n\n{BODY}"}]
RESPONSE_FORMAT: Any = {"type": "json_schema", "json_schema": {
    "name": "Triage", "schema": to_strict_json_schema(Triage), "strict": True}}


# ---------------------------------------------------------------- statistics and printing
def summary(ns: Sequence[int]) -> dict[str, float]:
    """Median and p99 in µs (p99 as peers.py takes it: the value at index int(0.99 n))."""
    us = sorted(t / 1000 for t in ns)
    return {"median_us": statistics.median(us), "p99_us": us[min(len(us) - 1, int(0.99 * len(us)))]}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[f"{c:,.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else f"MISS (by {abs(value - target) / target:.0%})"


# ---------------------------------------------------------------- the upstream
@contextlib.contextmanager
def upstream() -> Iterator[None]:
    """Use whatever listens on the port, else start nginx from bench/ and stop it afterwards."""
    with socket.socket() as s:
        if s.connect_ex((HOST, PORT)) == 0:
            yield
            return
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        sys.exit("nginx is not installed: apt-get install -y nginx-light")
    prefix = Path(tempfile.mkdtemp(prefix="smallops-nginx-"))
    conf = prefix / "nginx_upstream.conf"
    shutil.copy(HERE / "nginx_upstream.conf", conf)
    base = [nginx, "-e", "stderr", "-p", str(prefix), "-c", str(conf)]
    subprocess.run(base, check=True)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex((HOST, PORT)) == 0:
                    break
            time.sleep(0.05)
        yield
    finally:
        subprocess.run([*base, "-s", "quit"], check=False)
        shutil.rmtree(prefix, ignore_errors=True)


# ---------------------------------------------------------------- the two paths
def make_workflow(root: Path) -> Workflow[Triage]:
    (root / "triage.prompt").write_text(PROMPT)
    settings = Settings(root=root, database_url=f"sqlite:///{root}/log.db", providers={
        "openai": ProviderConfig("openai", "openai", base_url=BASE_URL)})
    return Workflow("email-triage", model=f"openai:{MODEL}", prompt="triage.prompt",
                    output=Triage, review="none", fallback="review", settings=settings,
                    base_dir=root)


def raw_call(client: openai.OpenAI) -> Triage:
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                          response_format=RESPONSE_FORMAT)
    return Triage.model_validate_json(resp.choices[0].message.content or "")


async def araw_call(client: openai.AsyncOpenAI) -> Triage:
    resp = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                response_format=RESPONSE_FORMAT)
    return Triage.model_validate_json(resp.choices[0].message.content or "")


def paths(wf: Workflow[Triage]) -> dict[str, Callable[[], Any]]:
    client = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
    return {"raw": lambda: raw_call(client), "smallops": lambda: wf.run(subject=SUBJECT, body=BODY)}


def timed(name: str, call: Callable[[], Any], n: int) -> list[int]:
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        call()
        out.append(time.perf_counter_ns() - t)
    CALLS[name] += n
    return out


def capture_record(wf: Workflow[Triage]) -> dict[str, Any]:
    """One real call's record, as the request path hands it to the writer."""
    writer, seen = wf.plan().writer, []
    submit = writer.submit
    writer.submit = lambda record: (seen.append(record), submit(record))[1]  # type: ignore[method-assign]
    try:
        result = wf.run(subject=SUBJECT, body=BODY)
    finally:
        del writer.submit
    CALLS["smallops"] += 1
    assert result.status == "auto", result
    return seen[0]


# ---------------------------------------------------------------- 1. sequential overhead
def sequential(wf: Workflow[Triage], n: int, rounds: int) -> dict[str, Any]:
    fns = paths(wf)
    for name, fn in fns.items():
        timed(name, fn, max(50, n // 10))
    per_round = []
    for r in range(rounds):
        order = ["raw", "smallops"] if r % 2 == 0 else ["smallops", "raw"]
        got = {}
        for name in order:
            gc.collect()
            got[name] = summary(timed(name, fns[name], n))
        raw, ours = got["raw"], got["smallops"]
        per_round.append({"round": r + 1, "order": "/".join(order), "raw": raw, "smallops": ours,
                          "overhead_ms": (ours["median_us"] - raw["median_us"]) / 1000,
                          "p99_overhead_ms": (ours["p99_us"] - raw["p99_us"]) / 1000,
                          "ratio": ours["median_us"] / raw["median_us"]})
    overall = {k: statistics.median(x[k] for x in per_round)
               for k in ("overhead_ms", "p99_overhead_ms", "ratio")}
    print(f"\n1. Sequential overhead: {rounds} rounds x {n} calls per path (µs per call)")
    table(["round", "order", "raw med", "raw p99", "smallops med", "smallops p99",
           "overhead ms", "p99 ovh ms", "ratio"],
          [[x["round"], x["order"], x["raw"]["median_us"], x["raw"]["p99_us"],
            x["smallops"]["median_us"], x["smallops"]["p99_us"], x["overhead_ms"],
            x["p99_overhead_ms"], x["ratio"]] for x in per_round])
    print(f"median of rounds: overhead {overall['overhead_ms']:.3f} ms (target <= 0.25: "
          f"{verdict(overall['overhead_ms'], 0.25, False)}), p99 overhead "
          f"{overall['p99_overhead_ms']:.3f} ms (target <= 1: "
          f"{verdict(overall['p99_overhead_ms'], 1.0, False)}), ratio {overall['ratio']:.3f}")
    return {"rounds": per_round, **overall}


# ---------------------------------------------------------------- 2. concurrent throughput
async def throughput(name: str, call: Callable[[], Awaitable[Any]], m: int) -> float:
    """Calls per second with CONCURRENCY workers sharing m calls."""
    per, extra = divmod(m, CONCURRENCY)

    async def worker(k: int) -> None:
        for _ in range(k):
            await call()

    t = time.perf_counter_ns()
    await asyncio.gather(*(worker(per + (i < extra)) for i in range(CONCURRENCY)))
    CALLS[name] += m
    return m / ((time.perf_counter_ns() - t) / 1e9)


async def concurrent_rounds(wf: Workflow[Triage], m: int, rounds: int) -> list[dict[str, Any]]:
    client = openai.AsyncOpenAI(base_url=BASE_URL, api_key=os.environ["OPENAI_API_KEY"],
                                max_retries=0)
    fns: dict[str, Callable[[], Awaitable[Any]]] = {
        "raw": lambda: araw_call(client), "smallops": lambda: wf.arun(subject=SUBJECT, body=BODY)}
    for name, fn in fns.items():
        await throughput(name, fn, CONCURRENCY * 4)
    out = []
    for r in range(rounds):
        order = ["raw", "smallops"] if r % 2 == 0 else ["smallops", "raw"]
        got = {}
        for name in order:
            gc.collect()
            got[name] = await throughput(name, fns[name], m)
        out.append({"round": r + 1, "order": "/".join(order), **got,
                    "ratio": got["smallops"] / got["raw"]})
    await client.close()
    return out


def concurrent(wf: Workflow[Triage], m: int, rounds: int) -> dict[str, Any]:
    per_round = asyncio.run(concurrent_rounds(wf, m, rounds))
    ratio = statistics.median(x["ratio"] for x in per_round)
    print(f"\n2. Concurrent throughput: {CONCURRENCY} in flight, {m} calls per path per round")
    table(["round", "order", "raw calls/s", "smallops calls/s", "ratio"],
          [[x["round"], x["order"], x["raw"], x["smallops"], x["ratio"]] for x in per_round])
    print(f"median ratio {ratio:.1%} (target >= 90%: {verdict(ratio, 0.9, True)})")
    t = time.perf_counter()
    flushed = smallops.flush(120)
    flush_s = time.perf_counter() - t
    writer = wf.plan().writer
    url = normalise_url(wf.settings.database_url, wf.settings.root)
    with get_engine(url).connect() as c:
        rows = c.execute(text("SELECT count(*) FROM runs")).scalar_one()
    made = CALLS["smallops"]
    print(f"flush: {flush_s * 1000:.0f} ms (complete: {flushed}); rows in the log: {rows:,}, "
          f"smallops calls made: {made:,}, spooled: {writer.spooled} -> "
          f"{'none lost' if rows == made else f'{made - rows} MISSING'}")
    return {"rounds": per_round, "ratio": ratio, "rows": rows, "calls": made,
            "none_lost": rows == made, "flush_ms": flush_s * 1000}


# ---------------------------------------------------------------- 3. the writer alone
def make_spool(record: dict[str, Any], n: int, folder: Path) -> tuple[Path, float]:
    """n rows encoded from copies of a real record, spooled in writer-sized batches."""
    redact = Redactor.from_environment()
    records = [{**record, "id": uuid7(), "started_at": record["started_at"] + i / 1000}
               for i in range(n)]
    t = time.perf_counter()
    rows = [run_row(r, redact) for r in records]
    encode_rate = n / (time.perf_counter() - t)
    spool = Spool(folder)
    for i in range(0, n, writer_module.BATCH):
        prompts = [prompt_row(record["plan"]["prompt"])] if i == 0 else []
        spool.append(rows[i:i + writer_module.BATCH], prompts)
    spool.close()
    return next(folder.glob("*.jsonl")), encode_rate


def replay_into(url: str, spool_file: Path, scratch: Path) -> tuple[float, int]:
    """(runs/s, rows counted) replaying a copy of the spool into an empty database at url."""
    engine = get_engine(url)
    ensure_schema(engine)
    folder = scratch / uuid7()
    folder.mkdir()
    shutil.copy(spool_file, folder)
    store = RowStore(engine)
    gc.collect()
    t = time.perf_counter()
    replayed = Spool(folder).replay(store.write)
    rate = replayed / (time.perf_counter() - t)
    store.close()
    with engine.connect() as c:
        rows = c.execute(text("SELECT count(*) FROM runs")).scalar_one()
    engine.dispose()
    shutil.rmtree(folder)
    return rate, rows


@contextlib.contextmanager
def pg_schema(pg_url: str) -> Iterator[str]:
    """A scratch schema, dropped afterwards; yields a URL whose search_path is that schema."""
    admin: Engine = create_engine(normalise_url(pg_url, Path.cwd()), isolation_level="AUTOCOMMIT")
    name = f"smallops_bench_{os.getpid()}_{time.monotonic_ns()}"
    with admin.connect() as c:
        c.execute(text(f"CREATE SCHEMA {name}"))
    url = make_url(normalise_url(pg_url, Path.cwd())).update_query_dict(
        {"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


def writer_alone(record: dict[str, Any], n: int, rounds: int, pg_url: str | None,
                 scratch: Path) -> dict[str, Any]:
    spool_file, encode_rate = make_spool(record, n, scratch / "source")
    kb = spool_file.stat().st_size / n / 1024
    results: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    for r in range(rounds):
        targets = ["sqlite", "postgres"] if r % 2 == 0 else ["postgres", "sqlite"]
        for target in targets:
            if target == "postgres" and pg_url is None:
                continue
            with contextlib.ExitStack() as stack:
                url = (f"sqlite:///{scratch}/replay-{r}.db" if target == "sqlite"
                       else stack.enter_context(pg_schema(pg_url or "")))
                rate, rows = replay_into(url, spool_file, scratch)
            if rows != n:
                sys.exit(f"writer: {target} holds {rows} rows after replaying {n}")
            results[target].append(rate)
    print(f"\n3. Writer alone: replaying {n:,} spooled runs ({kb:.1f} KiB each), {rounds} rounds "
          f"(runs/s; every round's row count verified)")
    rows_out, out = [], {"encode_runs_s": encode_rate}
    for target, goal in (("sqlite", 20_000), ("postgres", 10_000)):
        if not results[target]:
            rows_out.append([target, "skipped", "", ""])
            continue
        med = statistics.median(results[target])
        out[f"{target}_runs_s"] = med
        rows_out.append([target, f"{med:,.0f}", " ".join(f"{x:,.0f}" for x in results[target]),
                         f">= {goal:,}: {verdict(med, goal, True)}"])
    table(["database", "median", "rounds", "target"], rows_out)
    print(f"encoding records into rows (run_row, off the request path): {encode_rate:,.0f} runs/s")
    return out


# ---------------------------------------------------------------- 4. peers
def peer_clients(python: str, skip_pg: bool) -> list[str]:
    usable = []
    for client, modules in PEERS.items():
        probe = subprocess.run([python, "-c", "import " + ", ".join(modules)],
                               capture_output=True, check=False)
        if probe.returncode == 0 and not (skip_pg and client == "raw_pg"):
            usable.append(client)
    return usable


def run_peer(python: str, script: str, client: str, n: int, pg_url: str) -> dict[str, Any]:
    env = {**os.environ, "MOCK_BASE": BASE_URL, "PG_URL": pg_url.replace("+psycopg", ""),
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([python, script, client, str(n)], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def peers(wf: Workflow[Triage], args: argparse.Namespace) -> dict[str, Any]:
    script = args.peers_script
    if not script or not Path(script).is_file():
        print(f"\n4. Peers: skipped, no peers script at {script!r}")
        return {}
    clients = peer_clients(args.peers_python, args.skip_pg)
    missing = [c for c in PEERS if c not in clients]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in ["smallops", *clients]}
    ours = paths(wf)["smallops"]
    for r in range(args.peer_rounds):
        order = ["smallops", *clients]
        for name in order[r % len(order):] + order[:r % len(order)]:
            gc.collect()
            if name == "smallops":
                timed(name, ours, max(50, args.calls // 10))
                got: dict[str, Any] = summary(timed(name, ours, args.calls))
            else:
                got = run_peer(args.peers_python, script, name, args.calls, args.pg_url)
            runs[name].append(got)
    print(f"\n4. Peers: {args.peer_rounds} rounds x {args.calls} calls, each peer in its own "
          f"process ({args.peers_python}); smallops in-process; ratio = median / raw's median "
          f"in the same round (peers' raw sends no response_format)")
    if missing:
        print(f"not importable there, skipped: {', '.join(missing)}")
    out, rows = {}, []
    for name, got in runs.items():
        good = [(g, raw) for g, raw in zip(got, runs.get("raw", [{}] * len(got)), strict=True)
                if "median_us" in g]
        if not good:
            rows.append([name, "failed", "", got[0].get("error", "") if got else ""])
            continue
        med = statistics.median(g["median_us"] for g, _ in good)
        p99 = statistics.median(g["p99_us"] for g, _ in good)
        ratios = [g["median_us"] / raw["median_us"] for g, raw in good if "median_us" in raw]
        ratio = statistics.median(ratios) if ratios else float("nan")
        out[name] = {"median_us": med, "p99_us": p99, "ratio_to_raw": ratio}
        rows.append([name, f"{med:,.0f}", f"{p99:,.0f}", f"{ratio:.2f}"])
    table(["client", "median µs", "p99 µs", "x raw"], rows)
    return out


# ---------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=1000, help="sequential calls per path per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrent-calls", type=int, default=3000)
    p.add_argument("--writer-rows", type=int, default=20_000)
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--skip-pg", action="store_true")
    p.add_argument("--peers", action="store_true", help="also run the shared peers.py")
    p.add_argument("--peers-script", default="/work/shared/bench/peers.py")
    p.add_argument("--peers-python", default=sys.executable,
                   help="interpreter for peers.py (one that has the peers' packages)")
    p.add_argument("--peer-rounds", type=int, default=3)
    p.add_argument("--json", action="store_true", help="tables to stderr, results as JSON")
    return p.parse_args()


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    wf = make_workflow(scratch)
    record = capture_record(wf)
    print(f"smallops {smallops.__version__}, openai {openai.__version__}, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, upstream {BASE_URL}")
    results: dict[str, Any] = {"sequential": sequential(wf, args.calls, args.rounds),
                               "concurrent": concurrent(wf, args.concurrent_calls, args.rounds)}
    pg_url = None if args.skip_pg else args.pg_url
    results["writer"] = writer_alone(record, args.writer_rows, args.rounds, pg_url, scratch)
    if args.peers:
        results["peers"] = peers(wf, args)
    seq, conc, wr = results["sequential"], results["concurrent"], results["writer"]
    print("\nSummary")
    table(["measure", "value", "target", "verdict"], [
        ["median overhead per call", f"{seq['overhead_ms']:.3f} ms", "<= 0.25 ms",
         verdict(seq["overhead_ms"], 0.25, False)],
        ["p99 overhead per call", f"{seq['p99_overhead_ms']:.3f} ms", "<= 1 ms",
         verdict(seq["p99_overhead_ms"], 1.0, False)],
        ["concurrent throughput vs raw", f"{conc['ratio']:.1%}", ">= 90%",
         verdict(conc["ratio"], 0.9, True)],
        ["rows logged = calls made", f"{conc['rows']:,} / {conc['calls']:,}", "equal",
         "PASS" if conc["none_lost"] else "MISS"],
        *[[f"writer replay, {db}", f"{wr[f'{db}_runs_s']:,.0f} runs/s", f">= {goal:,}/s",
           verdict(wr[f"{db}_runs_s"], goal, True)]
          for db, goal in (("sqlite", 20_000), ("postgres", 10_000)) if f"{db}_runs_s" in wr],
    ])
    return results


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    scratch = Path(tempfile.mkdtemp(prefix="smallops-bench-"))
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with upstream(), redirect:
            results = run(args, scratch)
    finally:
        writer_module.reset()
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
