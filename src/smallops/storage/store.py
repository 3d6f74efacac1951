"""Batched, idempotent inserts of rows into the log: one transaction per batch.

Idempotent (a run id already present is skipped) so a batch replayed from the spool after an
uncertain commit never duplicates a run. SQLite gets `executemany`; Postgres gets COPY into a
temporary table and one `INSERT ... ON CONFLICT DO NOTHING`, about twice as fast as executemany.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine

from smallops.storage.db import ensure_schema
from smallops.storage.schema import PROMPT_COLUMNS, REVIEW_COLUMNS, RUN_COLUMNS

Row = Sequence[Any]
_RUN_TIMES = (RUN_COLUMNS.index("started_at"), RUN_COLUMNS.index("finished_at"))
_PROMPT_TIMES = (PROMPT_COLUMNS.index("created_at"),)
_REVIEW_TIMES = (REVIEW_COLUMNS.index("created_at"),)
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's own SQLite DateTime format


class RowStore:
    """Writes rows to one database through a connection it keeps open."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._connection: Any = None
        self._schema_ready = False

    def write(
        self, runs: Sequence[Row], prompts: Sequence[Row] = (), reviews: Sequence[Row] = ()
    ) -> None:
        """Insert in one transaction; on any error nothing is written and the error propagates."""
        if not self._schema_ready:
            ensure_schema(self.engine)
            self._schema_ready = True
        connection = self._connect()
        try:
            if self.dialect == "postgresql":
                _write_postgres(connection, runs, prompts, reviews)
            else:
                _write_sqlite(connection, runs, prompts, reviews)
        except BaseException:
            self._drop()
            raise

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        """Give the connection back (or drop it if it failed)."""
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
            self._connection = self.engine.raw_connection()
        return self._connection.driver_connection


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
    return datetime.fromtimestamp(epoch, timezone.utc).strftime(_SQLITE_TIME)


def _pg_time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _insert_sql(
    table: str, columns: tuple[str, ...], marker: str, conflict: tuple[str, str]
) -> str:
    names = ", ".join(columns)
    values = ", ".join([marker] * len(columns))
    return f"INSERT {conflict[0]}INTO {table} ({names}) VALUES ({values}){conflict[1]}"


_SQLITE_RUNS = _insert_sql("runs", RUN_COLUMNS, "?", ("OR IGNORE ", ""))
_SQLITE_PROMPTS = _insert_sql("prompt_versions", PROMPT_COLUMNS, "?", ("OR IGNORE ", ""))
_PG_PROMPTS = _insert_sql("prompt_versions", PROMPT_COLUMNS, "%s", ("", " ON CONFLICT DO NOTHING"))
_SQLITE_REVIEWS = _insert_sql("review_items", REVIEW_COLUMNS, "?", ("OR IGNORE ", ""))
_PG_REVIEWS = _insert_sql("review_items", REVIEW_COLUMNS, "%s", ("", " ON CONFLICT DO NOTHING"))
_PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS smallops_runs_stage "
    "(LIKE runs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_PG_COPY = f"COPY smallops_runs_stage ({', '.join(RUN_COLUMNS)}) FROM STDIN"
_PG_MERGE = (
    f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) "
    f"SELECT {', '.join(RUN_COLUMNS)} FROM smallops_runs_stage ON CONFLICT (id) DO NOTHING"
)


def _write_sqlite(
    connection: Any, runs: Sequence[Row], prompts: Sequence[Row], reviews: Sequence[Row]
) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        if prompts:
            connection.executemany(
                _SQLITE_PROMPTS, _with_times(prompts, _PROMPT_TIMES, _sqlite_time)
            )
        connection.executemany(_SQLITE_RUNS, _with_times(runs, _RUN_TIMES, _sqlite_time))
        if reviews:
            connection.executemany(
                _SQLITE_REVIEWS, _with_times(reviews, _REVIEW_TIMES, _sqlite_time)
            )
    except BaseException:
        connection.rollback()
        raise
    connection.commit()


def _write_postgres(
    connection: Any, runs: Sequence[Row], prompts: Sequence[Row], reviews: Sequence[Row]
) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute(_PG_STAGE)
            if prompts:
                cursor.executemany(_PG_PROMPTS, _with_times(prompts, _PROMPT_TIMES, _pg_time))
            with cursor.copy(_PG_COPY) as copy:
                for row in _with_times(runs, _RUN_TIMES, _pg_time):
                    copy.write_row(row)
            cursor.execute(_PG_MERGE)
            if reviews:
                cursor.executemany(_PG_REVIEWS, _with_times(reviews, _REVIEW_TIMES, _pg_time))
    except BaseException:
        connection.rollback()
        raise
    connection.commit()
