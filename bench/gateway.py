"""What the gateway adds to a call, against calling the upstream directly, in one run.

The upstream is nginx answering a fixed chat completion (bench/nginx_upstream.conf, started here
if nothing listens on 127.0.0.1:8912). The gateway is the real `smallops gateway` command in a
process of its own, with logging on (SQLite in a temporary project) and one route in front of
that upstream. The client is one keep-alive httpx connection, so both paths pay the same client
cost and the difference is the gateway's.

1. Sequential: --calls requests straight to nginx and --calls through the gateway, in --rounds
   rounds whose order alternates; median and p99 of each, the added latency (gateway minus
   direct, per percentile), and the gateway's own x-smallops-overhead-ms. Target: median added
   latency <= 1 ms.
2. Concurrent: --clients requests in flight (each on a keep-alive connection, from the gateway's
   own HTTP/1.1 client under uvloop) for --concurrent-calls requests, direct and through the
   gateway: requests per second.
3. Memory: the gateway's resident memory after the warm-up and at the end; with --memory-calls
   N, first --memory-warmup more requests (64 in flight: the breaker's 30 s window of outcomes,
   the log database's page cache and the allocators' pools fill up), then RSS after each tenth
   of N, and its growth (the highest tenth) over the RSS after that warm-up. Target: within 10%.
   Resident memory keeps the high-water mark of the log writer's queue (records waiting for the
   database): a stall of the writer after the warm-up shows as a step, not as a slope.
4. Logged: after the run, the gateway's log holds one run per request it answered.

The comparison with the LiteLLM proxy (issue 15) is not here yet.

Run: python bench/gateway.py [--calls 2000] [--rounds 3] [--clients 64]
     [--concurrent-calls 5000] [--memory-calls 0] [--memory-warmup 20000] [--workers 1] [--json]
Needs nginx (apt-get install -y nginx-light).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop
from overhead import BASE_URL, upstream
from sqlalchemy import create_engine, text

BODY = {
    "model": "fast",
    "messages": [
        {"role": "system", "content": "You triage inbound email for Acme Ops."},
        {"role": "user", "content": "Subject: Invoice\n\nWhere is my May invoice?"},
    ],
}
TARGET_MEDIAN_MS = 1.0
TARGET_MEMORY_GROWTH = 0.10  # resident memory over --memory-calls, after the warm-up


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def smallops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from smallops.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=True)


def start_gateway(
    root: Path, port: int, workers: int, env: dict[str, str]
) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", "from smallops.cli import main; main()"]
    args = ["-p", str(root), "gateway", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        if process.poll() is not None:
            sys.exit(
                f"the gateway did not start: {process.stderr.read() if process.stderr else ''}"
            )
        time.sleep(0.05)
    process.kill()
    sys.exit("the gateway did not start within 30 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sequential(
    client: httpx.Client, url: str, headers: dict[str, str], calls: int
) -> tuple[list[float], list[float]]:
    """Latencies in ms, and the gateway's own overhead header where there is one."""
    latencies, overheads = [], []
    for _ in range(calls):
        began = time.perf_counter()
        response = client.post(url, json=BODY, headers=headers)
        latencies.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
        if "x-smallops-overhead-ms" in response.headers:
            overheads.append(float(response.headers["x-smallops-overhead-ms"]))
    return latencies, overheads


async def concurrent(url: str, headers: dict[str, str], clients: int, calls: int) -> float:
    """Requests per second with `clients` in flight, each on its own keep-alive connection.

    The load comes from the gateway's own HTTP/1.1 client under uvloop: httpx's async client
    tops out near 150 requests per second here whatever the server, so it would measure itself.
    """
    from smallops.gateway.http1 import Http1Pool

    pool = Http1Pool()
    body = json.dumps(BODY).encode()
    sent = {"content-type": "application/json", **headers}
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            response = await pool.post(url, sent, body, 60.0, 10.0)
            await response.read(60.0)
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    rate = calls / (time.perf_counter() - began)
    pool.close()
    return rate


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--concurrent-calls", type=int, default=5000)
    parser.add_argument("--memory-calls", type=int, default=0)
    parser.add_argument("--memory-warmup", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="smallops-gateway-bench-"))
    (root / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "sqlite:///{root / "log.db"}"\n'
        f'[providers.openai]\nbase_url = "{BASE_URL}"\n'
        '[gateway.routes.fast]\nmodel = "openai:gpt-4o-mini-2024-07-18"\n'
    )
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench-" + os.urandom(8).hex()}
    key = smallops("-p", str(root), "gateway", "keys", "create", "bench", env=env).stdout.strip()
    port = free_port()
    direct_url = f"{BASE_URL}/chat/completions"
    gateway_url = f"http://127.0.0.1:{port}/v1/chat/completions"
    auth = {"authorization": f"Bearer {key}"}
    results: dict[str, Any] = {}
    with upstream():
        gateway = start_gateway(root, port, options.workers, env)
        try:
            with httpx.Client(timeout=30) as client:
                sequential(client, direct_url, {}, 200)
                sequential(client, gateway_url, auth, 500)  # warm-up
                results["rss_mb_after_warmup"] = round(rss_mb(gateway.pid), 1)
                direct: list[float] = []
                through: list[float] = []
                overheads: list[float] = []
                per_round = max(1, options.calls // options.rounds)
                for round_ in range(options.rounds):
                    order = [(direct_url, {}, direct), (gateway_url, auth, through)]
                    for url, headers, into in order if round_ % 2 == 0 else order[::-1]:
                        latencies, own = sequential(client, url, headers, per_round)
                        into.extend(latencies)
                        overheads.extend(own)
            for name, values in (("direct", direct), ("gateway", through)):
                results[f"{name}_median_ms"] = round(statistics.median(values), 3)
                results[f"{name}_p99_ms"] = round(pct(values, 0.99), 3)
            results["added_median_ms"] = round(
                results["gateway_median_ms"] - results["direct_median_ms"], 3
            )
            results["added_p99_ms"] = round(results["gateway_p99_ms"] - results["direct_p99_ms"], 3)
            results["own_overhead_median_ms"] = round(statistics.median(overheads), 3)
            results["own_overhead_p99_ms"] = round(pct(overheads, 0.99), 3)
            calls = options.concurrent_calls
            results["direct_rps"] = round(
                uvloop.run(concurrent(direct_url, {}, options.clients, calls))
            )
            results["gateway_rps"] = round(
                uvloop.run(concurrent(gateway_url, auth, options.clients, calls))
            )
            results["rss_mb_at_end"] = round(rss_mb(gateway.pid), 1)
            step = options.memory_calls // 10
            if step:
                memory_warmup = options.memory_warmup
                if memory_warmup:
                    uvloop.run(concurrent(gateway_url, auth, options.clients, memory_warmup))
                base = rss_mb(gateway.pid)
                results["rss_mb_before_memory_calls"] = round(base, 1)
                samples = []
                for _ in range(10):
                    uvloop.run(concurrent(gateway_url, auth, options.clients, step))
                    samples.append(round(rss_mb(gateway.pid), 1))
                results["rss_mb_every_tenth"] = samples
                growth = max(samples) / base - 1
                verdict = "PASS" if growth <= TARGET_MEMORY_GROWTH else "MISS"
                results["rss_growth_pct"] = round(100 * growth, 1)
                results["target_rss_growth_pct"] = f"<= {100 * TARGET_MEMORY_GROWTH:g} ({verdict})"
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.communicate(timeout=60)
    memory = 10 * (options.memory_calls // 10)
    memory += options.memory_warmup if memory else 0
    answered = 500 + len(through) + options.concurrent_calls + memory
    engine = create_engine(f"sqlite:///{root / 'log.db'}")
    with engine.connect() as connection:
        results["runs_logged"] = connection.execute(text("SELECT count(*) FROM runs")).scalar()
    engine.dispose()
    results["requests_answered"] = answered
    verdict = "PASS" if results["added_median_ms"] <= TARGET_MEDIAN_MS else "MISS"
    results["target_median_added_ms"] = f"<= {TARGET_MEDIAN_MS} ({verdict})"
    if options.json:
        print(json.dumps(results, indent=2))
        return
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
