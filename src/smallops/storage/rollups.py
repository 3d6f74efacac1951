"""Run rollups: per hour and key, what the runs did and cost, so reports never read every run.

A rollup row is keyed by the hour a run started (UTC) and its workflow, origin, status, error
type, requested and served model and prompt version ('' stands for NULL, so the key is a plain
unique key on both engines). It holds calls, priced calls and their cost (unpriced calls are
counted in `calls` only, never as $0), token sums, model mismatches, latency sum, minimum and
maximum, and a latency histogram.

The histogram has log buckets, BUCKETS_PER_DOUBLING to a doubling (growth factor 2^(1/8)); a
quantile is reported at its bucket's geometric midpoint, so it is within 2^(1/16) - 1 (4.4%) of
the exact one (and exact when it is the minimum or the maximum). Only buckets that hold runs
are stored, as a JSON object {bucket: runs}: a few dozen entries per row whatever the spread,
where fixed columns would need ~200 (1 µs to 10 minutes). The JSON is merged inside the upsert
itself (`ON CONFLICT ... DO UPDATE`, summing both objects with json_each / jsonb_each_text), so
a merge is one atomic statement on both engines: no read-modify-write, no lock to take first,
and writers in other processes cannot lose each other's counts. Keys are merged in sorted
order, so two Postgres writers never wait on each other's rows in opposite orders.

The log writer adds a batch's rollups in the transaction that inserts its runs (store.py), and
only for the runs that transaction actually inserted: a replayed or repeated run counts once, a
late run lands in the hour it started, and a refused batch leaves the rollups as they were. No
database trigger is involved: a failing trigger would roll back the log write. `rebuild`
recomputes them all from the runs (logs written before rollups existed, imports, edits).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from smallops.storage import label_rollups
from smallops.storage.db import write_transaction
from smallops.storage.hours import SQLITE_TIME, epoch, hour_of
from smallops.storage.schema import RUN_COLUMNS, run_rollups, runs

#: Buckets per doubling of latency: a bucket spans a factor of 2^(1/8), about 9%.
BUCKETS_PER_DOUBLING = 8
#: The most a quantile from the histogram is off from the exact one, relatively.
QUANTILE_ERROR = 2 ** (1 / (2 * BUCKETS_PER_DOUBLING)) - 1
#: The bucket of latencies of 0 ms (or less), reported as 0.
ZERO_BUCKET = -1000
_LOWEST, _HIGHEST = -999, 999  # 2^(±125) ms: no latency is outside

#: The key columns, in order: the hour, then what a run is grouped by.
KEY_COLUMNS = tuple(column.name for column in run_rollups.primary_key.columns)
TOTAL_COLUMNS = (
    "calls",
    "priced_calls",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "model_mismatches",
    "latency_sum_ms",
)
COLUMNS = (*KEY_COLUMNS, *TOTAL_COLUMNS, "latency_min_ms", "latency_max_ms", "latency_histogram")
#: What a run contributes, as rollups read it from a run (writer rows and rebuild alike).
FACT_COLUMNS = (
    "started_at",
    "workflow",
    "origin",
    "status",
    "error_type",
    "model_requested",
    "model_served",
    "prompt_version",
    "model_mismatch",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "latency_ms",
)
_KEY_OF_ROW = itemgetter(*(RUN_COLUMNS.index(name) for name in FACT_COLUMNS[1:8]))
_STARTED, _MISMATCH, _INPUT, _OUTPUT, _CACHED, _COST, _LATENCY = (
    RUN_COLUMNS.index(name) for name in (FACT_COLUMNS[0], *FACT_COLUMNS[8:])
)

Key = tuple[int, str, str, str, str, str, str, str]  # the hour as epoch seconds, then the rest


def bucket_of(latency_ms: float) -> int:
    """The histogram bucket of a latency."""
    if not latency_ms > 0:  # 0, negative or NaN
        return ZERO_BUCKET
    if math.isinf(latency_ms):
        return _HIGHEST
    index = math.floor(math.log2(latency_ms) * BUCKETS_PER_DOUBLING)
    return min(max(index, _LOWEST), _HIGHEST)


def bucket_value(bucket: int) -> float:
    """The latency a bucket stands for: its geometric midpoint (0 for the zero bucket)."""
    if bucket == ZERO_BUCKET:
        return 0.0
    return float(2 ** ((bucket + 0.5) / BUCKETS_PER_DOUBLING))


def quantile(
    histogram: Mapping[int, int],
    pct: float,
    low: float | None = None,
    high: float | None = None,
) -> float | None:
    """The pct-th percentile of a histogram, interpolated between closest ranks as
    `statistics.quantiles(method="inclusive")` does, kept within the known `low`..`high`."""
    n = sum(histogram.values())
    if n == 0:
        return None
    rank = pct / 100 * (n - 1)
    below = math.floor(rank)
    ordered = sorted(histogram.items())
    lower, upper = _value_at(ordered, below), _value_at(ordered, min(below + 1, n - 1))
    value = lower + (rank - below) * (upper - lower)
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    return value


def _value_at(ordered: Sequence[tuple[int, int]], rank: int) -> float:
    seen = 0
    for bucket, count in ordered:
        seen += count
        if seen > rank:
            return bucket_value(bucket)
    return bucket_value(ordered[-1][0])


@dataclass
class Totals:
    """What the runs of one key (or of any set of keys) add up to."""

    calls: int = 0
    priced_calls: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    model_mismatches: int = 0
    latency_sum_ms: float = 0.0
    latency_min_ms: float | None = None
    latency_max_ms: float | None = None
    histogram: Counter[int] = field(default_factory=Counter)

    @classmethod
    def summed(cls, row: Any) -> Totals:
        """The totals of a query summing rollup rows (each total column under its own name,
        the latency extremes as `low` and `high`)."""
        return cls(
            calls=int(row.calls),
            priced_calls=int(row.priced_calls),
            cost_usd=float(row.cost_usd),
            input_tokens=int(row.input_tokens),
            output_tokens=int(row.output_tokens),
            cached_tokens=int(row.cached_tokens),
            model_mismatches=int(row.model_mismatches),
            latency_sum_ms=float(row.latency_sum_ms),
            latency_min_ms=row.low,
            latency_max_ms=row.high,
        )

    def add_run(
        self,
        mismatch: Any,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int,
        cost_usd: float | None,
        latency_ms: float,
    ) -> None:
        self.calls += 1
        if cost_usd is not None:
            self.priced_calls += 1
            self.cost_usd += cost_usd
        self.input_tokens += input_tokens or 0
        self.output_tokens += output_tokens or 0
        self.cached_tokens += cached_tokens or 0
        self.model_mismatches += 1 if mismatch else 0
        self.latency_sum_ms += latency_ms
        self._latency_range(latency_ms, latency_ms)
        self.histogram[bucket_of(latency_ms)] += 1

    def add(self, other: Totals) -> None:
        self.calls += other.calls
        self.priced_calls += other.priced_calls
        self.cost_usd += other.cost_usd
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.model_mismatches += other.model_mismatches
        self.latency_sum_ms += other.latency_sum_ms
        if other.latency_min_ms is not None and other.latency_max_ms is not None:
            self._latency_range(other.latency_min_ms, other.latency_max_ms)
        self.histogram.update(other.histogram)

    def _latency_range(self, low: float, high: float) -> None:
        self.latency_min_ms = low if self.latency_min_ms is None else min(self.latency_min_ms, low)
        self.latency_max_ms = (
            high if self.latency_max_ms is None else max(self.latency_max_ms, high)
        )

    def percentile(self, pct: float) -> float | None:
        return quantile(self.histogram, pct, self.latency_min_ms, self.latency_max_ms)


class Rollups(dict[Key, Totals]):
    """Rollups being gathered in memory, by key, before they are merged into the table."""

    def add_fact(self, fact: Sequence[Any]) -> None:
        """Add one run given as FACT_COLUMNS, its start as epoch seconds."""
        (started, workflow, origin, status, error, requested, served, prompt) = fact[:8]
        key = (
            hour_of(started),
            workflow,
            origin or "",
            status,
            error or "",
            requested,
            served or "",
            prompt,
        )
        totals = self.get(key)
        if totals is None:
            totals = self[key] = Totals()
        totals.add_run(*fact[8:])

    @classmethod
    def of_run_rows(cls, rows: Iterable[Sequence[Any]]) -> Rollups:
        """Rollups of `runs` rows in RUN_COLUMNS order with epoch-second times (the writer's):
        rows grouped by key first, then each group summed by builtins, which keeps the log
        writer's cost per run to a few microseconds."""
        groups: dict[Key, list[Sequence[Any]]] = {}
        for row in rows:
            workflow, origin, status, error, requested, served, prompt = _KEY_OF_ROW(row)
            key = (
                hour_of(row[_STARTED]),
                workflow,
                origin or "",
                status,
                error or "",
                requested,
                served or "",
                prompt,
            )
            group = groups.get(key)
            if group is None:
                groups[key] = [row]
            else:
                group.append(row)
        rollups = cls()
        for key, group in groups.items():
            latencies = [row[_LATENCY] for row in group]
            costs = [row[_COST] for row in group if row[_COST] is not None]
            rollups[key] = Totals(
                calls=len(group),
                priced_calls=len(costs),
                cost_usd=sum(costs, 0.0),
                input_tokens=sum(row[_INPUT] or 0 for row in group),
                output_tokens=sum(row[_OUTPUT] or 0 for row in group),
                cached_tokens=sum(row[_CACHED] or 0 for row in group),
                model_mismatches=sum(1 for row in group if row[_MISMATCH]),
                latency_sum_ms=sum(latencies, 0.0),
                latency_min_ms=min(latencies),
                latency_max_ms=max(latencies),
                histogram=Counter(map(bucket_of, latencies)),
            )
        return rollups


ExecuteMany = Callable[[str, list[tuple[Any, ...]]], Any]


def merge(execute_many: ExecuteMany, dialect: str, rollups: Mapping[Key, Totals]) -> None:
    """Add `rollups` to the table in the caller's transaction, with one upsert per key:
    `execute_many(sql, rows)` is a DB-API `executemany` (sqlite3 or psycopg)."""
    if not rollups:
        return
    postgres = dialect == "postgresql"
    rows = [_params(key, rollups[key], postgres) for key in sorted(rollups)]
    execute_many(_UPSERT_PG if postgres else _UPSERT_SQLITE, rows)


def _params(key: Key, totals: Totals, postgres: bool) -> tuple[Any, ...]:
    started = datetime.fromtimestamp(key[0], timezone.utc)
    hour = started if postgres else started.strftime(SQLITE_TIME)
    histogram = json.dumps({str(b): n for b, n in sorted(totals.histogram.items())})
    return (
        hour,
        *key[1:],
        totals.calls,
        totals.priced_calls,
        totals.cost_usd,
        totals.input_tokens,
        totals.output_tokens,
        totals.cached_tokens,
        totals.model_mismatches,
        totals.latency_sum_ms,
        totals.latency_min_ms,
        totals.latency_max_ms,
        histogram,
    )


def _upsert(marker: str, json_marker: str, least: str, greatest: str, merged: str) -> str:
    values = ", ".join([marker] * (len(COLUMNS) - 1) + [json_marker])
    sums = ", ".join(f"{c} = run_rollups.{c} + excluded.{c}" for c in TOTAL_COLUMNS)
    return (
        f"INSERT INTO run_rollups ({', '.join(COLUMNS)}) VALUES ({values}) "
        f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {sums}, "
        f"latency_min_ms = {least}(run_rollups.latency_min_ms, excluded.latency_min_ms), "
        f"latency_max_ms = {greatest}(run_rollups.latency_max_ms, excluded.latency_max_ms), "
        f"latency_histogram = {merged}"
    )


_UPSERT_SQLITE = _upsert(
    "?",
    "?",
    "min",
    "max",
    "(SELECT json_group_object(key, n) FROM (SELECT key, sum(value) AS n FROM ("
    "SELECT key, value FROM json_each(run_rollups.latency_histogram) UNION ALL "
    "SELECT key, value FROM json_each(excluded.latency_histogram)) GROUP BY key))",
)
_UPSERT_PG = _upsert(
    "%s",
    "CAST(%s AS jsonb)",
    "LEAST",
    "GREATEST",
    "(SELECT jsonb_object_agg(key, n) FROM (SELECT key, sum(value::bigint) AS n FROM ("
    "SELECT key, value FROM jsonb_each_text(run_rollups.latency_histogram) UNION ALL "
    "SELECT key, value FROM jsonb_each_text(excluded.latency_histogram)) AS both_sides "
    "GROUP BY key) AS merged)",
)


# --- rebuild ---------------------------------------------------------------------------------


@dataclass
class Rebuilt:
    """What a rebuild did."""

    runs: int
    rollup_rows: int
    seconds: float
    label_rows: int = 0


#: Keys gathered in memory before they are merged into the table: bounds a rebuild's memory
#: whatever the number of runs.
REBUILD_FLUSH_KEYS = 50_000
_REBUILD_CHUNK = 5_000


def rebuild(engine: Engine, progress: Callable[[int], None] | None = None) -> Rebuilt:
    """Recompute every rollup (label rollups too) from the runs, in one transaction: the tables
    are cleared and refilled, runs streamed, so memory stays bounded however many runs there
    are. Log writes wait meanwhile (SQLite: the write lock; Postgres: the table lock), so no run
    is missed or counted twice; `progress(runs)` is called as runs are read."""
    with write_transaction(engine) as connection:
        return rebuild_in(connection, progress)


def rebuild_in(connection: Connection, progress: Callable[[int], None] | None = None) -> Rebuilt:
    """`rebuild` inside the caller's write transaction (a migration's, so that a log is never
    left migrated without its rollups)."""
    started = time.monotonic()
    dialect = connection.dialect.name
    columns = [runs.c[name] for name in FACT_COLUMNS]
    counted = 0
    if dialect == "postgresql":
        connection.exec_driver_sql("LOCK TABLE run_rollups IN EXCLUSIVE MODE")
    connection.execute(run_rollups.delete())
    raw: Any = connection.connection.driver_connection
    cursor = raw.cursor() if dialect == "sqlite" else None
    execute_many = cursor.executemany if cursor is not None else _pg_execute_many(raw)
    pending = Rollups()
    streamed = select(*columns).execution_options(stream_results=True, yield_per=_REBUILD_CHUNK)
    for chunk in connection.execute(streamed).partitions(_REBUILD_CHUNK):
        for row in chunk:
            fact = list(row)
            fact[0] = epoch(fact[0])
            pending.add_fact(fact)
        counted += len(chunk)
        if len(pending) >= REBUILD_FLUSH_KEYS:
            merge(execute_many, dialect, pending)
            pending = Rollups()
        if progress is not None:
            progress(len(chunk))
    merge(execute_many, dialect, pending)
    label_rows = label_rollups.rebuild_in(connection, execute_many)
    if cursor is not None:
        cursor.close()
    rows = connection.execute(select(func.count()).select_from(run_rollups)).scalar_one()
    return Rebuilt(counted, rows, time.monotonic() - started, label_rows)


def _pg_execute_many(raw: Any) -> ExecuteMany:
    def execute_many(sql: str, rows: list[tuple[Any, ...]]) -> None:
        with raw.cursor() as cursor:
            cursor.executemany(sql, rows)

    return execute_many


def count_runs(engine: Engine) -> int:
    """How many runs a rebuild will read."""
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(runs)).scalar_one())
