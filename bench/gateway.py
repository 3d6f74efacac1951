"""What the gateway adds to a call, against calling the upstream directly and against the LiteLLM
proxy, side by side in one run (issue 15).

The upstream is nginx answering a fixed chat completion (bench/nginx_upstream.conf, started here
if nothing listens on 127.0.0.1:8912). Both proxies run as processes of their own, with the same
number of workers (--workers), one route "fast" -> gpt-4o-mini-2024-07-18 at that upstream, a
dummy upstream key from the environment, and logging on:

- smallops: the real `smallops gateway` command; every request is a run in its log (SQLite in a
  temporary project, content mode "full"), checked against a virtual key.
- LiteLLM: `litellm --config` with a generated config.yaml, no database (no DATABASE_URL), the
  client checked against its master key, telemetry off and the model cost map read locally.
  Without a database LiteLLM keeps no request log of its own, so its closest equivalent is on:
  a CustomLogger callback that appends the standard logging payload LiteLLM hands its loggers
  (key hash, model, usage, cost, timings, messages and response) as one JSON line per request.
  Neither writes an access log line per request (uvicorn's access log is off in both).

1. Sequential: --calls requests to each of nginx, the gateway and LiteLLM, in --rounds rounds
   whose order rotates, over one keep-alive httpx connection each, so every path pays the same
   client cost; median and p99, and the added latency (proxy minus direct, per percentile),
   and the gateway's own x-smallops-overhead-ms. Target: the gateway's median added latency
   <= 1 ms.
2. Concurrent: --clients requests in flight (each on a keep-alive connection, from the
   gateway's own HTTP/1.1 client under uvloop: httpx's async client tops out near 150
   requests/s here and would measure itself), --concurrent-calls per target per round,
   --rounds rounds in rotating order; the median requests/s. Target: the gateway's at least
   twice LiteLLM's. Also each proxy's CPU time per request over these rounds (user and system,
   from /proc), which other work on the machine disturbs less than the rates do.
3. Memory: each proxy's resident memory (the process and its children) after --memory-warmup
   more requests (the breaker's 30 s window of outcomes, the log database's page cache and the
   allocators' pools fill up), then after each tenth of --memory-calls more
   (--litellm-memory-calls to LiteLLM, which is far slower, and a warm-up scaled alike),
   --clients in flight, each proxy's tenths back to back (pauses between them would let a log
   writer that falls behind catch up unseen). Target: the gateway's highest tenth within 10% of
   the RSS after the warm-up, over 100,000 requests. The gateway holds new requests while its
   log writer is more than a thousand runs behind (gateway/log_room.py), so a sustained surplus
   of requests over what the log commits shows as a slower rate, not as growing memory.
4. Logged: after the run, the gateway's log holds one run per request it answered, and
   LiteLLM's callback file one line per request.

LiteLLM is found with --litellm PATH or SMALLOPS_BENCH_LITELLM (the `litellm` executable); its
pins conflict with smallops', so it lives in a venv of its own:
    python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'
    python bench/gateway.py --litellm /tmp/litellm-venv/bin/litellm
Without it, LiteLLM's rows say how to install it and the rest still runs.

Run: python bench/gateway.py [--calls 2000] [--rounds 3] [--clients 64]
     [--concurrent-calls 5000] [--memory-calls 10000] [--memory-warmup 20000]
     [--litellm-memory-calls N] [--workers 1] [--litellm PATH] [--json]
Needs nginx (apt-get install -y nginx-light).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop
from overhead import BASE_URL, MODEL, upstream
from sqlalchemy import create_engine, text

BODY = {
    "model": "fast",
    "messages": [
        {"role": "system", "content": "You triage inbound email for Acme Ops."},
        {"role": "user", "content": "Subject: Invoice\n\nWhere is my May invoice?"},
    ],
}
TARGET_MEDIAN_MS = 1.0
TARGET_THROUGHPUT_RATIO = 2.0
TARGET_MEMORY_GROWTH = 0.10
MEMORY_TARGET_CALLS = 100_000
WARMUP = 500
LITELLM_ENV = "SMALLOPS_BENCH_LITELLM"
INSTALL = (
    "not installed: python3 -m venv /tmp/litellm-venv && "
    "/tmp/litellm-venv/bin/pip install 'litellm[proxy]', then "
    f"--litellm /tmp/litellm-venv/bin/litellm (or {LITELLM_ENV})"
)
LITELLM_LOG = "litellm-requests.jsonl"
# The callback LiteLLM loads from the config's folder: one JSON line per request, as its
# loggers see it (kwargs["standard_logging_object"]), so its logging costs what a log costs.
LITELLM_CALLBACK = '''"""One JSON line per request, for the smallops gateway bench."""

import json
import os

from litellm.integrations.custom_logger import CustomLogger


class RequestLog(CustomLogger):
    def __init__(self):
        super().__init__()
        self.file = open(os.environ["SMALLOPS_BENCH_LITELLM_LOG"], "a", buffering=1)

    def write(self, kwargs, status):
        payload = kwargs.get("standard_logging_object") or {}
        self.file.write(json.dumps({"status": status, **payload}, default=str) + "\\n")

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.write(kwargs, "success")

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self.write(kwargs, "failure")


request_log = RequestLog()
'''
ROWS = ("direct", "smallops gateway", "LiteLLM proxy")


@dataclass
class Target:
    """One way to answer BODY: its URL, the client's headers, and the process serving it."""

    name: str
    url: str
    headers: dict[str, str]
    process: subprocess.Popen[str] | None = None
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    cpu: float = 0.0  # seconds the serving process spent on the concurrent rounds
    own: list[float] = field(default_factory=list)  # the gateway's x-smallops-overhead-ms
    answered: int = 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def smallops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from smallops.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=True)


def wait_listening(
    process: subprocess.Popen[str], port: int, name: str, log: Path, seconds: float
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-20:]
            sys.exit(f"{name} did not start:\n" + "\n".join(tail))
        time.sleep(0.1)
    process.kill()
    sys.exit(f"{name} did not start within {seconds:.0f} s (its output: {log})")


def start(
    command: list[str], port: int, name: str, root: Path, env: dict[str, str], seconds: float
) -> subprocess.Popen[str]:
    """Start a proxy with its output in a file (a pipe nobody reads would block it)."""
    log = root / f"{name.split()[0].lower()}-output.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=root
        )
    wait_listening(process, port, name, log, seconds)
    return process


def start_gateway(
    root: Path, port: int, workers: int, env: dict[str, str]
) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", "from smallops.cli import main; main()"]
    args = ["-p", str(root), "gateway", "--port", str(port), "--workers", str(workers)]
    return start([*command, *args], port, "smallops gateway", root, env, 30)


def litellm_config(root: Path) -> Path:
    """config.yaml (as JSON, which YAML reads) with the gateway's route, and the callback."""
    (root / "bench_request_log.py").write_text(LITELLM_CALLBACK)
    config = {
        "model_list": [
            {
                "model_name": "fast",
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": BASE_URL,
                    "api_key": "os.environ/OPENAI_API_KEY",
                },
            }
        ],
        "litellm_settings": {"callbacks": "bench_request_log.request_log"},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    path = root / "litellm-config.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_litellm(
    executable: str, root: Path, port: int, workers: int, env: dict[str, str]
) -> subprocess.Popen[str]:
    config = litellm_config(root)
    quiet = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST")}
    quiet |= {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY_DISABLED": "True",
        "LITELLM_LOG": "ERROR",
        "SMALLOPS_BENCH_LITELLM_LOG": str(root / LITELLM_LOG),
    }
    command = [executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--num_workers", str(workers)]
    return start(command, port, "LiteLLM proxy", root, quiet, 180)


def litellm_executable(given: str | None) -> str | None:
    path = given or os.environ.get(LITELLM_ENV)
    if not path:
        return None
    found = shutil.which(path)
    if found is None:
        how = INSTALL.removeprefix("not installed: ")
        sys.exit(f"--litellm {path}: no such executable ({how})")
    return found


def litellm_version(executable: str) -> str:
    """The installed version, asked of the Python in the executable's #! line."""
    first = Path(executable).read_text(errors="replace").partition("\n")[0]
    python = first.removeprefix("#!").strip()
    probe = [python, "-c", "from importlib.metadata import version; print(version('litellm'))"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def tree(pid: int) -> Iterator[int]:
    yield pid
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # a thread that ended since the listing
            continue
        for child in children:
            yield from tree(int(child))


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the workers, when there are several)."""
    total = 0
    for each in tree(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of a process and its children so far."""
    ticks = 0
    for each in tree(pid):
        fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def sequential(client: httpx.Client, target: Target, calls: int) -> list[float]:
    """Latencies in ms."""
    latencies = []
    for _ in range(calls):
        began = time.perf_counter()
        response = client.post(target.url, json=BODY, headers=target.headers)
        latencies.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
        if "x-smallops-overhead-ms" in response.headers:
            target.own.append(float(response.headers["x-smallops-overhead-ms"]))
    target.answered += calls
    return latencies


async def concurrent(target: Target, clients: int, calls: int) -> float:
    """Requests per second with `clients` in flight, each on its own keep-alive connection."""
    from smallops.gateway.http1 import Http1Pool

    pool = Http1Pool()
    body = json.dumps(BODY).encode()
    sent = {"content-type": "application/json", **target.headers}
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            response = await pool.post(target.url, sent, body, 60.0, 10.0)
            await response.read(60.0, 1 << 20)
            if response.status != 200:
                raise RuntimeError(f"{target.name}: HTTP {response.status}")

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    rate = calls / (time.perf_counter() - began)
    pool.close()
    target.answered += calls
    return rate


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rotated(targets: list[Target], round_: int) -> list[Target]:
    shift = round_ % len(targets)
    return targets[shift:] + targets[:shift]


def stop(process: subprocess.Popen[str] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def logged(root: Path, targets: dict[str, Target]) -> dict[str, int]:
    engine = create_engine(f"sqlite:///{root / 'log.db'}")
    with engine.connect() as connection:
        runs = connection.execute(text("SELECT count(*) FROM runs")).scalar() or 0
    engine.dispose()
    counts = {"smallops gateway": int(runs)}
    if "LiteLLM proxy" in targets:
        path = root / LITELLM_LOG
        counts["LiteLLM proxy"] = len(path.read_text().splitlines()) if path.exists() else 0
    return counts


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def summarize(
    targets: dict[str, Target],
    memory: dict[str, list[float]],
    counts: dict[str, int],
    options: argparse.Namespace,
    litellm_missing: str | None,
    version: str | None,
) -> dict[str, Any]:
    direct = targets["direct"]
    rows: dict[str, dict[str, Any]] = {}
    for name in ROWS:
        if name not in targets:
            rows[name] = {"error": litellm_missing}
            continue
        target = targets[name]
        row: dict[str, Any] = {
            "median_ms": round(statistics.median(target.latencies), 3),
            "p99_ms": round(pct(target.latencies, 0.99), 3),
            "rps": round(statistics.median(target.rates)),
            "rps_rounds": [round(r) for r in target.rates],
        }
        if target is not direct:
            row["added_median_ms"] = round(row["median_ms"] - rows["direct"]["median_ms"], 3)
            row["added_p99_ms"] = round(row["p99_ms"] - rows["direct"]["p99_ms"], 3)
            if target.own:
                row["own_overhead_median_ms"] = round(statistics.median(target.own), 3)
                row["own_overhead_p99_ms"] = round(pct(target.own, 0.99), 3)
            concurrent_calls = options.rounds * options.concurrent_calls
            row["cpu_ms_per_request"] = round(target.cpu * 1000 / concurrent_calls, 2)
            samples = memory[name]
            row["memory_calls"] = (
                options.memory_calls if name == "smallops gateway" else options.litellm_memory_calls
            )
            row["rss_mb_start"], row["rss_mb_end"] = samples[0], samples[-1]
            row["rss_mb_every_tenth"] = samples[1:]
            row["requests_answered"] = target.answered
            row["requests_logged"] = counts[name]
        rows[name] = row
    gateway = rows["smallops gateway"]
    checks: dict[str, dict[str, Any]] = {}
    checks["median_added_ms"] = {
        "target": f"<= {TARGET_MEDIAN_MS}",
        "value": gateway["added_median_ms"],
        "verdict": met(gateway["added_median_ms"] <= TARGET_MEDIAN_MS),
    }
    proxy = rows["LiteLLM proxy"]
    if "rps" in proxy:
        ratio = round(gateway["rps"] / proxy["rps"], 2)
        per_round = [
            round(s / p, 2) for s, p in zip(gateway["rps_rounds"], proxy["rps_rounds"], strict=True)
        ]
        checks["throughput_ratio"] = {
            "target": f">= {TARGET_THROUGHPUT_RATIO}",
            "value": ratio,
            "rounds": per_round,
            "verdict": met(ratio >= TARGET_THROUGHPUT_RATIO),
        }
    else:
        checks["throughput_ratio"] = {"target": f">= {TARGET_THROUGHPUT_RATIO}", "verdict": "n/a"}
    growth = max(gateway["rss_mb_every_tenth"]) / gateway["rss_mb_start"] - 1
    enough = options.memory_calls >= MEMORY_TARGET_CALLS
    checks["memory_growth"] = {
        "target": f"<= {TARGET_MEMORY_GROWTH:.0%} over {MEMORY_TARGET_CALLS:,} requests",
        "value": f"{growth:+.1%} over {options.memory_calls:,}",
        "verdict": met(growth <= TARGET_MEMORY_GROWTH)
        + ("" if enough else f" (over {options.memory_calls:,} only: not the target's run)"),
    }
    return {
        "rows": rows,
        "targets": checks,
        "setup": {
            "workers": options.workers,
            "calls": options.calls,
            "rounds": options.rounds,
            "clients": options.clients,
            "concurrent_calls": options.concurrent_calls,
            "memory_calls": options.memory_calls,
            "litellm_memory_calls": options.litellm_memory_calls,
            "cpus": os.cpu_count(),
            "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
            "litellm_version": version,
            "litellm_logging": f"CustomLogger callback, one JSON line per request ({LITELLM_LOG})",
            "smallops_logging": "one run per request in the SQLite log, content mode full",
        },
    }


def show(results: dict[str, Any]) -> None:
    headers = [
        "",
        "median ms",
        "p99 ms",
        "added median",
        "added p99",
        "req/s",
        "CPU ms/req",
        "RSS start MB",
        "RSS end MB",
        "answered",
        "logged",
    ]
    keys = [
        "median_ms",
        "p99_ms",
        "added_median_ms",
        "added_p99_ms",
        "rps",
        "cpu_ms_per_request",
        "rss_mb_start",
        "rss_mb_end",
        "requests_answered",
        "requests_logged",
    ]
    lines = [headers]
    for name, row in results["rows"].items():
        if "error" in row:
            lines.append([name, row["error"]])
            continue
        lines.append([name, *(f"{row[k]:,}" if k in row else "-" for k in keys)])
    widths = [
        max(len(line[i]) for line in lines if len(line) == len(headers))
        for i in range(len(headers))
    ]
    for line in lines:
        if len(line) != len(headers):
            print(f"{line[0]:<{widths[0]}}  {line[1]}")
            continue
        first, *rest = line
        cells = (c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))
        print("  ".join([first.ljust(widths[0]), *cells]))
    setup = results["setup"]
    litellm = setup["litellm_version"]
    to_litellm = f" ({setup['litellm_memory_calls']:,} to LiteLLM)" if litellm else ""
    print(
        f"\nsequential: {setup['calls']:,} calls per target in {setup['rounds']} rounds; "
        f"req/s: median of {setup['rounds']} rounds of {setup['concurrent_calls']:,} calls, "
        f"{setup['clients']} in flight; {setup['workers']} worker(s) each; "
        f"RSS over {setup['memory_calls']:,} more requests{to_litellm}; "
        f"load average {' '.join(setup['loadavg_at_end'])}"
    )
    shown = f"LiteLLM {litellm} {setup['litellm_logging']}" if litellm else "LiteLLM not run"
    print(f"logging: smallops {setup['smallops_logging']}; {shown}")
    gateway = results["rows"]["smallops gateway"]
    if "own_overhead_median_ms" in gateway:
        print(
            f"the gateway's own work (x-smallops-overhead-ms): median "
            f"{gateway['own_overhead_median_ms']} ms, p99 {gateway['own_overhead_p99_ms']} ms"
        )
    for name, check in results["targets"].items():
        shown = f"{check['value']}" if "value" in check else "-"
        rounds = f" (rounds: {check['rounds']})" if "rounds" in check else ""
        print(f"target {name} {check['target']}: {shown}{rounds}: {check['verdict']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per target")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--concurrent-calls", type=int, default=5000, help="per target per round")
    parser.add_argument("--memory-calls", type=int, default=10000, help="per proxy")
    parser.add_argument("--workers", type=int, default=1, help="of each proxy")
    parser.add_argument("--litellm", help=f"the litellm executable (or {LITELLM_ENV})")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--memory-warmup",
        type=int,
        default=20000,
        help="requests before the memory series (LiteLLM's scaled as its memory calls are)",
    )
    parser.add_argument(
        "--litellm-memory-calls",
        type=int,
        help="the memory phase's requests to LiteLLM (default: --memory-calls)",
    )
    options = parser.parse_args()
    if options.litellm_memory_calls is None:
        options.litellm_memory_calls = options.memory_calls
    executable = litellm_executable(options.litellm)

    root = Path(tempfile.mkdtemp(prefix="smallops-gateway-bench-"))
    (root / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "sqlite:///{root / "log.db"}"\n'
        f'[providers.openai]\nbase_url = "{BASE_URL}"\n'
        f'[gateway.routes.fast]\nmodel = "openai:{MODEL}"\n'
    )
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench-" + os.urandom(8).hex()}
    env["LITELLM_MASTER_KEY"] = "sk-master-" + os.urandom(8).hex()
    key = smallops("-p", str(root), "gateway", "keys", "create", "bench", env=env).stdout.strip()
    gateway_port, litellm_port = free_port(), free_port()
    targets = {
        "direct": Target("direct", f"{BASE_URL}/chat/completions", {}),
        "smallops gateway": Target(
            "smallops gateway",
            f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
            {"authorization": f"Bearer {key}"},
        ),
    }
    if executable:
        targets["LiteLLM proxy"] = Target(
            "LiteLLM proxy",
            f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
            {"authorization": f"Bearer {env['LITELLM_MASTER_KEY']}"},
        )
    proxies = [t for t in targets.values() if t.name != "direct"]
    memory: dict[str, list[float]] = {t.name: [] for t in proxies}
    with upstream():
        try:
            targets["smallops gateway"].process = start_gateway(
                root, gateway_port, options.workers, env
            )
            if executable:
                targets["LiteLLM proxy"].process = start_litellm(
                    executable, root, litellm_port, options.workers, env
                )
            order = list(targets.values())
            with httpx.Client(timeout=30) as client:
                for target in order:
                    sequential(client, target, WARMUP)
                per_round = max(1, options.calls // options.rounds)
                for round_ in range(options.rounds):
                    for target in rotated(order, round_):
                        target.latencies.extend(sequential(client, target, per_round))
            for round_ in range(options.rounds):
                for target in rotated(order, round_):
                    pid = target.process.pid if target.process else None
                    began = cpu_seconds(pid) if pid else 0.0
                    rate = uvloop.run(concurrent(target, options.clients, options.concurrent_calls))
                    target.rates.append(rate)
                    target.cpu += (cpu_seconds(pid) - began) if pid else 0.0
            steps = {
                "smallops gateway": options.memory_calls // 10,
                "LiteLLM proxy": options.litellm_memory_calls // 10,
            }
            for target in proxies:
                assert target.process is not None
                base = steps[ROWS[1]]
                warmup = options.memory_warmup * steps[target.name] // base if base else 0
                if warmup:
                    uvloop.run(concurrent(target, options.clients, warmup))
                memory[target.name].append(round(rss_mb(target.process.pid), 1))
            for target in proxies:  # back to back: no idle time for a log to catch up in
                assert target.process is not None
                for _ in range(10):
                    if steps[target.name]:
                        uvloop.run(concurrent(target, options.clients, steps[target.name]))
                    memory[target.name].append(round(rss_mb(target.process.pid), 1))
        finally:
            for target in proxies:
                stop(target.process)
    counts = logged(root, targets)
    missing = None if executable else INSTALL
    version = litellm_version(executable) if executable else None
    results = summarize(targets, memory, counts, options, missing, version)
    if options.json:
        print(json.dumps(results, indent=2))
    else:
        show(results)


if __name__ == "__main__":
    main()
