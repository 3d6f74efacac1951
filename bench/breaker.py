"""What the circuit breaker costs a guarded call on its closed path: one allow and one record.

In this process's memory, and shared through Redis (one Lua script each way). Medians over
rounds; the machine is shared and noisy. bench/overhead.py measures the breaker inside whole
calls, against the raw SDK; this isolates the store.

Run: .venv/bin/python bench/breaker.py [--pairs 50000] [--redis-pairs 2000] [--rounds 5]
     [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from smallops.resilience.breaker import (
    BreakerConfig,
    BreakerStore,
    MemoryBreakerStore,
    RedisBreakerStore,
)


def per_pair(store: BreakerStore, pairs: int) -> float:
    """Microseconds per allow + record on a closed breaker."""
    key, config = f"bench-{uuid.uuid4().hex[:12]}|openai", BreakerConfig()
    start = time.perf_counter()
    for _ in range(pairs):
        store.allow(key, config)
        store.record(key, config, ok=True, probe=False)
    return (time.perf_counter() - start) / pairs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--redis-pairs", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    stores: list[tuple[str, BreakerStore, int]] = [
        ("memory", MemoryBreakerStore(), args.pairs),
        ("redis", RedisBreakerStore(args.redis_url), args.redis_pairs),
    ]
    for name, store, pairs in stores:
        rounds = [per_pair(store, pairs) for _ in range(args.rounds)]
        shown = " ".join(f"{r:.1f}" for r in rounds)
        print(f"{name:>6}: median {statistics.median(rounds):.1f} µs per allow+record ({shown})")


if __name__ == "__main__":
    main()
