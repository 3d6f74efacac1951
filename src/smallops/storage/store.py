"""Batched, idempotent, time-bounded inserts of rows into the log: one transaction per batch.

Idempotent (a run id already present is skipped) so a batch replayed from the spool after an
uncertain commit never duplicates a run. SQLite gets `executemany`; Postgres gets COPY into a
temporary table and one `INSERT ... ON CONFLICT DO NOTHING`, about twice as fast as executemany.
The same transaction adds the runs it actually inserted (ids read first on SQLite, RETURNING on
Postgres) to the rollups (rollups.py, then label_rollups.py), so a replayed run is counted once
and a refused batch leaves them untouched, and writes the prompt parts its runs refer to
(prompt_parts.py): a run is never committed without them, whatever happened to earlier batches.

Every write has a bounded time: a watchdog breaks the connection when the time is up (Postgres:
its socket is shut down; SQLite: the statement is interrupted), so a database that stops
answering without refusing (packets dropped) costs a few seconds, never a hung writer. A failure
is either `Unreachable` (the database could not take the rows: spool them) or a refusal of the
rows themselves; `land` tells the two apart and sets refused rows aside, one by one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine

from smallops.storage import label_rollups, rollups
from smallops.storage.db import direct_engine, ensure_schema
from smallops.storage.health import refused
from smallops.storage.hours import SQLITE_TIME
from smallops.storage.prompt_parts import parts_of
from smallops.storage.schema import PART_COLUMNS, PROMPT_COLUMNS, REVIEW_COLUMNS, RUN_COLUMNS
from smallops.storage.watchdog import shut_down

Row = Sequence[Any]
DEFAULT_TIMEOUT = 10.0  # seconds one batch may take before the database counts as unreachable
_RUN_TIMES = (RUN_COLUMNS.index("started_at"), RUN_COLUMNS.index("finished_at"))
_PROMPT_TIMES = (PROMPT_COLUMNS.index("created_at"),)
_REVIEW_TIMES = (REVIEW_COLUMNS.index("created_at"),)
_PART_TIMES = (PART_COLUMNS.index("created_at"), len(PART_COLUMNS))  # and last_used, added
#: Seconds a part's last_used may lag behind the writes that refer to it: a busy workflow
#: rewrites its part rows once a minute, not in every batch (prune.py allows for it).
PART_REFRESH = 60.0


@dataclass
class RowBatch:
    """Rows written in one transaction: runs, the review items of some of them, prompt versions,
    and the prompt parts the runs refer to.

    A run travels with its review item and its prompt parts: split() never parts them. The
    parts ride along (they are not counted): a batch is as long as its runs and versions.
    """

    runs: list[Row] = field(default_factory=list)
    reviews: list[Row] = field(default_factory=list)
    prompts: list[Row] = field(default_factory=list)
    parts: list[Row] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.runs) + len(self.prompts)

    def units(self) -> Iterator[RowBatch]:
        """One batch per prompt version, and per run with its review item and prompt parts."""
        reviews = {row[0]: row for row in self.reviews}
        for prompt in self.prompts:
            yield RowBatch(prompts=[prompt])
        for run in self.runs:
            review = reviews.get(run[0])
            yield RowBatch(
                runs=[run],
                reviews=[review] if review is not None else [],
                parts=parts_of(run, self.parts),
            )

    def split(self) -> tuple[RowBatch, RowBatch]:
        units = list(self.units())
        half = len(units) // 2
        return merge(units[:half]), merge(units[half:])


def merge(batches: Sequence[RowBatch]) -> RowBatch:
    merged = RowBatch()
    for batch in batches:
        merged.runs += batch.runs
        merged.reviews += batch.reviews
        merged.prompts += batch.prompts
    merged.parts = list({part[0]: part for batch in batches for part in batch.parts}.values())
    return merged


class Unreachable(Exception):
    """The database could not take a batch (down, stalled, locked, full): nothing was written."""


class RowStore:
    """Writes rows to one database through a connection of its own, each write time-bounded."""

    def __init__(self, engine: Engine, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.timeout = timeout
        self._direct = direct_engine(engine)
        self._connection: Any = None
        self._schema_ready = False

    def write(
        self,
        runs: Sequence[Row],
        prompts: Sequence[Row] = (),
        reviews: Sequence[Row] = (),
        parts: Sequence[Row] = (),
    ) -> None:
        """Insert in one transaction; on any error nothing is written and the error propagates
        (TimeoutError when the watchdog ended it)."""
        if not self._schema_ready:
            ensure_schema(self.engine)
            self._schema_ready = True
        connection = self._connect()
        try:
            with bounded(connection, self.timeout):
                if self.dialect == "postgresql":
                    _write_postgres(connection, runs, prompts, reviews, parts)
                else:
                    _write_sqlite(connection, runs, prompts, reviews, parts)
        except BaseException:
            self._drop()
            raise

    def ping(self) -> None:
        """Raise if the database cannot be reached within the time bound."""
        connection = self._connect()
        try:
            with bounded(connection, self.timeout):
                connection.execute("SELECT 1").fetchall()
                connection.rollback()
        except BaseException:
            self._drop()
            raise

    def close(self) -> None:
        """Close the connection (or drop it if it failed)."""
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:
                self._connection.invalidate()
            self._connection = None

    def _drop(self) -> None:
        """Discard a connection that failed: it may be broken."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.invalidate()
            self._connection = None

    def forget(self) -> None:
        """After a fork: the parent's connection is not ours to use or close."""
        self._connection = None
        self.engine.dispose(close=False)

    def _connect(self) -> Any:
        if self._connection is None:
            self._connection = self._direct.raw_connection()
            if self.dialect == "sqlite":  # a lock held elsewhere: wait no longer than the bound
                busy = self._connection.driver_connection.cursor()
                busy.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
                busy.close()
        return self._connection.driver_connection


def land(store: RowStore, batch: RowBatch, set_aside: Callable[[RowBatch, str], None]) -> int:
    """Write `batch`; rows the database refuses are found by halving and set aside, so one
    odd record never holds back the others. Returns the runs written; raises Unreachable when
    the database cannot take rows at all (what was not written is then the caller's to keep)."""
    if not len(batch):
        return 0
    try:
        store.write(batch.runs, batch.prompts, batch.reviews, batch.parts)
        return len(batch.runs)
    except Exception as exc:
        if not refused(exc):
            raise Unreachable(describe(exc)) from exc
        if len(batch) == 1:
            set_aside(batch, describe(exc))
            return 0
    first, second = batch.split()
    return land(store, first, set_aside) + land(store, second, set_aside)


def describe(exc: BaseException) -> str:
    """The first line of what went wrong, with the error's class."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0]}" if text else type(orig).__name__


@contextlib.contextmanager
def bounded(connection: Any, seconds: float) -> Iterator[None]:
    """Break `connection` (a DB-API connection) if the work inside takes over `seconds`; the
    blocked call then fails and TimeoutError is raised from it."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        _interrupt(connection)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except BaseException as exc:
        if fired.is_set():
            raise TimeoutError(f"no answer within {seconds:g} s") from exc
        raise
    finally:
        timer.cancel()


def _interrupt(connection: Any) -> None:
    """Make a call blocked on `connection` fail now, from another thread."""
    with contextlib.suppress(Exception):
        if isinstance(connection, sqlite3.Connection):
            connection.interrupt()
        else:
            shut_down(connection.pgconn.socket)  # psycopg: the socket goes under libpq's feet


def _with_times(
    rows: Sequence[Row], columns: tuple[int, ...], convert: Any
) -> list[tuple[Any, ...]]:
    out = []
    for row in rows:
        values = list(row)
        for i in columns:
            values[i] = convert(values[i])
        out.append(tuple(values))
    return out


def _sqlite_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime(SQLITE_TIME)


def _pg_time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _insert_sql(table: str, columns: tuple[str, ...], marker: str) -> str:
    """An insert that skips a row whose key is already there, and nothing else: a NOT NULL or
    CHECK failure still raises (SQLite's OR IGNORE would drop such a row without a word)."""
    names = ", ".join(columns)
    values = ", ".join([marker] * len(columns))
    return f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT ({columns[0]}) DO NOTHING"


def _upsert_parts_sql(marker: str) -> str:
    """A prompt part is inserted, or its last_used moved on when it is over PART_REFRESH old.
    On Postgres the conflicting row is locked either way until the transaction ends, so a
    concurrent prune cannot delete a part between this statement and the commit of the runs
    that refer to it (prune.py)."""
    names = ", ".join((*PART_COLUMNS, "last_used"))
    values = ", ".join([marker] * (len(PART_COLUMNS) + 1))
    return (
        f"INSERT INTO prompt_parts ({names}) VALUES ({values}) ON CONFLICT (id) DO UPDATE "
        f"SET last_used = excluded.last_used WHERE prompt_parts.last_used < {marker}"
    )


_SQLITE_PARTS = _upsert_parts_sql("?")
_PG_PARTS = _upsert_parts_sql("%s")
_SQLITE_RUNS = _insert_sql("runs", RUN_COLUMNS, "?")
_SQLITE_PROMPTS = _insert_sql("prompt_versions", PROMPT_COLUMNS, "?")
_PG_PROMPTS = _insert_sql("prompt_versions", PROMPT_COLUMNS, "%s")
_SQLITE_REVIEWS = _insert_sql("review_items", REVIEW_COLUMNS, "?")
_PG_REVIEWS = _insert_sql("review_items", REVIEW_COLUMNS, "%s")
_PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS smallops_runs_stage "
    "(LIKE runs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_PG_COPY = f"COPY smallops_runs_stage ({', '.join(RUN_COLUMNS)}) FROM STDIN"
_PG_MERGE = (
    f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) "
    f"SELECT {', '.join(RUN_COLUMNS)} FROM smallops_runs_stage ON CONFLICT (id) DO NOTHING "
    "RETURNING id"
)
_SQLITE_ID_CHUNK = 500  # ids per `IN (...)`: far below SQLite's limit on parameters


def _first_of_each(runs: Sequence[Row], wanted: Callable[[Any], bool]) -> list[Row]:
    """The runs whose id is `wanted`, each id once (a batch may repeat a run)."""
    seen: set[Any] = set()
    out = []
    for row in runs:
        if row[0] not in seen and wanted(row[0]):
            seen.add(row[0])
            out.append(row)
    return out


def _sqlite_logged(connection: Any, ids: list[Any]) -> set[Any]:
    """Which of `ids` the runs table already holds (inside the write lock, so it stays true)."""
    found: set[Any] = set()
    for start in range(0, len(ids), _SQLITE_ID_CHUNK):
        chunk = ids[start : start + _SQLITE_ID_CHUNK]
        sql = f"SELECT id FROM runs WHERE id IN ({', '.join('?' * len(chunk))})"
        found.update(row[0] for row in connection.execute(sql, chunk))
    return found


def _part_rows(parts: Sequence[Row], convert: Any) -> list[tuple[Any, ...]]:
    """The rows to upsert: each part once, in id order (two writers lock them in the same
    order), stamped with now as last_used, and the age past which last_used is moved."""
    now = time.time()
    unique = sorted({part[0]: part for part in parts}.values(), key=lambda part: part[0])
    stamped = [(*part, now) for part in unique]
    stale = convert(now - PART_REFRESH)
    return [(*row, stale) for row in _with_times(stamped, _PART_TIMES, convert)]


def _write_sqlite(
    connection: Any,
    runs: Sequence[Row],
    prompts: Sequence[Row],
    reviews: Sequence[Row],
    parts: Sequence[Row] = (),
) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        if parts:
            connection.executemany(_SQLITE_PARTS, _part_rows(parts, _sqlite_time))
        if prompts:
            connection.executemany(
                _SQLITE_PROMPTS, _with_times(prompts, _PROMPT_TIMES, _sqlite_time)
            )
        logged = _sqlite_logged(connection, [row[0] for row in runs])
        connection.executemany(_SQLITE_RUNS, _with_times(runs, _RUN_TIMES, _sqlite_time))
        inserted = _first_of_each(runs, lambda run_id: run_id not in logged)
        rollups.merge(connection.executemany, "sqlite", rollups.Rollups.of_run_rows(inserted))
        labels = label_rollups.counts_of_run_rows(connection, "sqlite", inserted)
        label_rollups.merge(connection.executemany, "sqlite", labels)
        if reviews:
            connection.executemany(
                _SQLITE_REVIEWS, _with_times(reviews, _REVIEW_TIMES, _sqlite_time)
            )
    except BaseException:
        connection.rollback()
        raise
    connection.commit()


def _write_postgres(
    connection: Any,
    runs: Sequence[Row],
    prompts: Sequence[Row],
    reviews: Sequence[Row],
    parts: Sequence[Row] = (),
) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute(_PG_STAGE)
            if parts:
                cursor.executemany(_PG_PARTS, _part_rows(parts, _pg_time))
            if prompts:
                cursor.executemany(_PG_PROMPTS, _with_times(prompts, _PROMPT_TIMES, _pg_time))
            with cursor.copy(_PG_COPY) as copy:
                for row in _with_times(runs, _RUN_TIMES, _pg_time):
                    copy.write_row(row)
            cursor.execute(_PG_MERGE)
            new = {row[0] for row in cursor.fetchall()}
            inserted = _first_of_each(runs, new.__contains__)
            merged = rollups.Rollups.of_run_rows(inserted)
            rollups.merge(cursor.executemany, "postgresql", merged)
            labels = label_rollups.counts_of_run_rows(connection, "postgresql", inserted)
            label_rollups.merge(cursor.executemany, "postgresql", labels)
            if reviews:
                cursor.executemany(_PG_REVIEWS, _with_times(reviews, _REVIEW_TIMES, _pg_time))
    except BaseException:
        with contextlib.suppress(Exception):
            connection.rollback()
        raise
    connection.commit()
