"""Independent reads of one page, run side by side: a page's wait is its slowest read, not
their sum.

A dashboard page reads the rollups several ways (day totals, groups, latency histograms,
decisions). The database does some of that work and Python the rest (histograms are summed
here), and neither holds the other up: sqlite3 and psycopg let go of the GIL while the
database works. A few threads of one shared pool are enough; each read takes its own pooled
connection, as any request does.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Reads of one page at a time; more would only queue behind each other on two cores.
THREADS = 4
_pool: ThreadPoolExecutor | None = None


def together(*reads: Callable[[], Any]) -> list[Any]:
    """Each read's result, in order; the first read's error is raised once all have ended."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="smallops-reads")
    futures = [_pool.submit(read) for read in reads]
    return [future.result() for future in futures]
