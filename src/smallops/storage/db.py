"""Engines for the log database: SQLite (WAL) embedded by default, Postgres via psycopg 3."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection as Connection  # the names the layers above type with
from sqlalchemy import Engine as Engine
from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from smallops.config import LogTarget
from smallops.errors import ConfigError, MissingExtraError

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30
_engines: dict[str, Engine] = {}
_direct: dict[str, Engine] = {}
# TCP keepalives: a Postgres that vanishes without a word (a dropped network) is noticed in
# about 30 s instead of the kernel's two hours.
PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
_lock = threading.Lock()
_migrating = threading.RLock()  # Alembic's context is module-global: one migration at a time


def log_database(target: LogTarget) -> tuple[str, Engine]:
    """The log database: its URL (normalised) and engine. A URL that cannot be used is a
    ConfigError naming where it was set: SMALLOPS_DATABASE_URL or smallops.toml."""
    url = normalise_url(target.url, target.root, target.source)
    return url, get_engine(url, target.source)


def normalise_url(url: str, root: Path, source: str = "the database URL") -> str:
    """Pick psycopg 3 for Postgres; make a relative SQLite path relative to the project."""
    if "\x00" in url:  # the OS refuses it in a path; libpq would cut the URL short there
        raise ConfigError(
            f"{source} contains a NUL character (\\u0000)",
            hint="remove it: no database URL has one",
        )
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"{source} is not a valid database URL",
            hint="use sqlite:///path/to.db or postgresql://user@host/dbname",
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if not path.is_absolute():
            parsed = parsed.set(database=str(root / path))
    return parsed.render_as_string(hide_password=False)


#: Query parameters libpq (and the drivers) take a password from: hidden like the URL's own.
_SECRET_QUERY = ("password", "sslpassword")


def safe_url(url: str) -> str:
    """The URL with its password hidden (`?password=` too), fit for messages and logs."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparseable database URL>"
    hidden = {key: "***" for key in parsed.query if key.lower() in _SECRET_QUERY}
    if hidden:
        parsed = parsed.update_query_dict(hidden)
    return parsed.render_as_string(hide_password=True)


def get_engine(url: str, source: str = "the database URL") -> Engine:
    """One engine per database URL in this process; `source` says where the URL was set."""
    with _lock:
        if url not in _engines:
            _engines[url] = _create(url, source)
        return _engines[url]


def direct_engine(engine: Engine) -> Engine:
    """An engine on the same database whose connections are opened afresh, never pooled: the
    log writer keeps one open itself, and a pooled connection is pinged on checkout, which a
    stalled network never answers."""
    url = engine.url.render_as_string(hide_password=False)
    with _lock:
        if url not in _direct:
            _direct[url] = _create(url, "the database URL", pooled=False)
        return _direct[url]


def _create(url: str, source: str, pooled: bool = True) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise MissingExtraError("psycopg", "postgres", "a Postgres database") from None
        connect_args = {"connect_timeout": 5, **PG_KEEPALIVES}
        if not pooled:
            return create_engine(url, poolclass=NullPool, connect_args=connect_args)
        # Enough connections for `smallops serve` under load: past the pool size, a returned
        # connection is closed, and the next request pays for a new one.
        return create_engine(
            url, pool_pre_ping=True, pool_size=20, max_overflow=10, connect_args=connect_args
        )
    if backend != "sqlite":
        raise ConfigError(
            f"{source}: database {backend!r} is not supported", hint="use SQLite or Postgres"
        )
    if parsed.database not in (None, "", ":memory:"):
        _check_writable(Path(parsed.database), source)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        **({} if pooled else {"poolclass": NullPool}),
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _check_writable(path: Path, source: str) -> None:
    """Make the SQLite file's folder and open the file for writing (SQLite creates it anyway),
    so a path nobody can write is a ConfigError now, not a traceback or a spool that never
    drains."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the log database {path}: {exc.strerror or exc}",
            hint=f"point {source} at a file in a folder you can write to",
        ) from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun explicitly, below
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    _use_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch a database to WAL (a lasting setting). The switch needs a moment alone with the
    file and SQLite does not wait for it, so while another process is setting up the same new
    database, try again until the busy timeout rather than fail."""
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] in ("wal", "memory"):
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_begin(connection: Any) -> None:
    """BEGIN IMMEDIATE for transactions that will write after reading (claims, decisions), so
    two processes never both read an item as free; a plain BEGIN otherwise."""
    immediate = connection.get_execution_options().get("smallops_immediate")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction for read-then-write work: row locks on Postgres (the caller's FOR UPDATE),
    the database write lock from the start on SQLite."""
    with engine.connect() as connection:
        connection = connection.execution_options(smallops_immediate=True)
        with connection.begin():
            yield connection


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def newest_file_revision() -> str | None:
    """The newest migration's revision as its file name says (`NNNN_what.py` holds revision
    "NNNN"; a test holds every file to that), read without importing Alembic."""
    found = sorted(path.name[:4] for path in (MIGRATIONS / "versions").glob("[0-9]" * 4 + "_*.py"))
    return found[-1] if found else None


def recorded_revision(engine: Engine) -> str | None:
    """The revision the log records, read directly; None if it cannot be read (no table yet, or
    the database does not answer: then Alembic's own check says why)."""
    try:
        with engine.connect() as connection:
            value = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except SQLAlchemyError:
        return None
    return str(value) if value is not None else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations in one transaction; on Postgres under an advisory lock, so processes
    never race. A log that had runs before the rollups existed gets them computed from its runs
    in that transaction (migrations/env.py)."""
    from alembic import command

    with _migrating:
        command.upgrade(alembic_config(engine), revision)


def ensure_schema(engine: Engine) -> None:
    """Bring the schema to the latest version if it is behind (or absent). A log already at the
    newest migration file's revision is seen so without importing Alembic (a tenth of a second
    off every command)."""
    newest = newest_file_revision()
    if newest is not None and recorded_revision(engine) == newest:
        return
    if current_revision(engine) != head_revision():
        with _migrating:
            if current_revision(engine) != head_revision():
                upgrade(engine)


def dispose_engines() -> None:
    """Close every pooled connection and forget the engines."""
    with _lock:
        for engine in (*_engines.values(), *_direct.values()):
            engine.dispose()
        _engines.clear()
        _direct.clear()
