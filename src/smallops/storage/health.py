"""Whether the database can be reached, told once per change rather than once per failed call.

`unreachable` tells an outage (down, stalled, locked, a file that cannot be opened) from a bug
in a query, and `refused` a database that refuses some rows for what they hold (a type, a
length, a constraint) from one that cannot take any. `Health` logs one warning when the
database stops answering and one when it is back,
however many requests fail in between.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc

from smallops.redact import Redactor

#: What the log database raises when a statement fails, for code outside storage to catch.
DatabaseError = sa_exc.SQLAlchemyError

log = logging.getLogger("smallops")

# The DB-API (PEP 249) classes a driver raises when the database cannot be used right now: a
# refused or dropped connection, a timeout, a server shutting down.
UNREACHABLE = frozenset({"OperationalError", "InterfaceError"})
# SQLite raises OperationalError for a syntax error or a missing table too; these are the ones
# that mean the file cannot be used now.
SQLITE_UNAVAILABLE = (
    "unable to open",
    "is locked",
    "disk I/O error",
    "readonly database",
    "database or disk is full",
)


def unreachable(error: BaseException) -> bool:
    """Whether `error` means the database cannot be reached or used now (not a bad query)."""
    if isinstance(error, (sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        return True  # the pool found no connection in time, or a connection died
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        return error.orig is not None and unreachable(error.orig)
    if isinstance(error, sqlite3.Error):
        return any(words in str(error) for words in SQLITE_UNAVAILABLE)
    return any(kind.__name__ in UNREACHABLE for kind in type(error).__mro__)


def refused(exc: BaseException) -> bool:
    """True when the database refused the rows themselves (their data broke a type, a length,
    an encoding or a constraint), as opposed to not being able to take any rows now."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, (UnicodeError, ValueError, TypeError, OverflowError)):
        return True
    if isinstance(orig, (sqlite3.DataError, sqlite3.IntegrityError, sqlite3.InterfaceError)):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - no Postgres driver, no Postgres errors
        return False
    return isinstance(orig, (psycopg.DataError, psycopg.IntegrityError))


def first_line(error: BaseException) -> str:
    """The error's first line (SQLAlchemy appends the SQL and a link), with secrets masked."""
    text = str(error).strip().splitlines()
    return Redactor.from_environment()(text[0] if text else type(error).__name__) or ""


class Health:
    """One database's state as its callers see it; logs only the changes."""

    def __init__(self, label: str, while_down: str) -> None:
        self.label = label
        self.while_down = while_down  # what the user sees meanwhile, for the warning
        self._down = False
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._down

    def failed(self, reason: str) -> None:
        """A call found the database unreachable: a warning if it was up until now."""
        with self._lock:
            if self._down:
                return
            self._down = True
        log.warning("smallops: %s unreachable (%s); %s", self.label, reason, self.while_down)

    def answered(self) -> None:
        """A call reached the database: a line saying so if it was down."""
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.warning("smallops: %s is back", self.label)


class CommitWatch:
    """Whether this thread's database work reached a COMMIT: after a failure, a write that did
    is not known to be lost, and says so (the web's decisions)."""

    def __init__(self, engine: Engine) -> None:
        self._local = threading.local()
        event.listen(engine, "commit", self._committing)

    def start(self) -> None:
        self._local.started = False

    @property
    def reached(self) -> bool:
        return bool(getattr(self._local, "started", False))

    def _committing(self, _connection: Connection) -> None:
        self._local.started = True
