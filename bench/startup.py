"""How long the command line takes to start: `smallops --help`, `smallops list --help` and
`python -c "import smallops"`, each in a fresh process, wall time from spawn to exit.

Prints the median and p90 of N runs of each (after one warm-up run, so the file cache is warm).
--baseline-src DIR times the same commands with another checkout's `src` first on PYTHONPATH
(e.g. the code before a change), alternating with this one so that both see the same load.
The machine is shared and noisy: quote medians, and the load they were measured under.

Run: python bench/startup.py [--runs 20] [--baseline-src ../main/src]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

#: What the console script runs (`smallops` on PATH is a two-line wrapper around this).
CLI = [sys.executable, "-c", "import sys; from smallops.cli import main; main()"]

COMMANDS = {
    "smallops --help": [*CLI, "--help"],
    "smallops list --help": [*CLI, "list", "--help"],
    'python -c "import smallops"': [sys.executable, "-c", "import smallops"],
}


def wall(command: list[str], src: Path) -> float:
    """Seconds from spawn to exit of one run, which must succeed."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baseline-src", type=Path, default=None)
    args = parser.parse_args()
    sources = {"this": SRC}
    if args.baseline_src is not None:
        sources["baseline"] = args.baseline_src.resolve()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.runs} runs each, {os.cpu_count()} cores, load average {load:.2f} at start")
    print(f"{'command':<30} {'code':<9} {'median':>8} {'p90':>8}")
    for label, command in COMMANDS.items():
        times: dict[str, list[float]] = {name: [] for name in sources}
        for src in sources.values():
            wall(command, src)  # warm-up
        for _ in range(args.runs):
            for name, src in sources.items():
                times[name].append(wall(command, src))
        for name, values in times.items():
            median, tail = statistics.median(values), p90(values)
            print(f"{label:<30} {name:<9} {median * 1000:>6.0f}ms {tail * 1000:>6.0f}ms")


if __name__ == "__main__":
    main()
