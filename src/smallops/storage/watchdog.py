"""A bound on each Postgres call: a statement, commit or ping that gets no answer in time has its
connection cut, so the thread waiting on it fails instead of hanging on a stalled database.

A stalled server (a hung host, a proxy holding bytes, a half-open connection) leaves a client
waiting on its socket forever: psycopg has no per-call timeout, TCP keepalives still see a live
peer, and the server's statement_timeout cannot reach a client whose bytes are held. So one thread
watches the engine's connections: a connection busy with the same call (libpq's transaction
status ACTIVE, and no statement started since) for longer than the bound has its socket shut
down. psycopg then raises OperationalError, SQLAlchemy discards the connection, and the caller
gets an outage it can report. Connecting is bounded already, by `connect_timeout`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event

_watchdogs: weakref.WeakKeyDictionary[Engine, Watchdog] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def bound_calls(engine: Engine, seconds: float) -> Watchdog | None:
    """Cut any call on `engine` that gets no answer within `seconds` (Postgres; None for SQLite,
    whose waits are bounded by its busy timeout). One watchdog per engine: a second call sets
    its bound. The idle connections the engine made before it was watched are closed: the ping
    that checks one out comes before the checkout event, so it would go unwatched."""
    if engine.dialect.name != "postgresql":
        return None
    with _lock:
        watchdog = _watchdogs.get(engine)
        if watchdog is None:
            watchdog = _watchdogs[engine] = Watchdog(seconds)
            event.listen(engine.pool, "connect", watchdog.watch)
            event.listen(engine.pool, "checkout", watchdog.watch)
            event.listen(engine, "before_cursor_execute", watchdog.statement)
            engine.pool.dispose()
        watchdog.seconds = seconds
        return watchdog


@dataclass
class _Call:
    statements: int = 0  # statements started on the connection
    seen: int = -1  # ... when it was last seen busy
    since: float | None = None  # when it was first seen busy with that statement


class Watchdog:
    """Watches the connections of one engine; `cuts` counts the calls it cut."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.cuts = 0
        self._calls: weakref.WeakKeyDictionary[Any, _Call] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, dbapi_connection: Any, *_: Any) -> None:
        """Pool event: a connection made or handed out; watch it (once)."""
        with self._lock:
            if dbapi_connection not in self._calls:
                self._calls[dbapi_connection] = _Call()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name="smallops-db-watchdog"
                )
                self._thread.start()

    def statement(self, _conn: Any, cursor: Any, *_: Any) -> None:
        """Engine event: a statement starts, so a busy connection is busy with a new call."""
        call = self._calls.get(cursor.connection)
        if call is not None:
            call.statements += 1

    def _run(self) -> None:
        while True:
            time.sleep(min(0.25, self.seconds / 4))
            with self._lock:
                calls = list(self._calls.items())
                if not calls:
                    self._thread = None  # started again by the next connection
                    return
            now = time.monotonic()
            for connection, call in calls:
                with contextlib.suppress(Exception):  # a connection closing under us
                    self._check(connection, call, now)

    def _check(self, connection: Any, call: _Call, now: float) -> None:
        from psycopg import pq

        if connection.closed:
            with self._lock:
                self._calls.pop(connection, None)
            return
        if connection.info.transaction_status != pq.TransactionStatus.ACTIVE:
            call.since = None
        elif call.since is None or call.seen != call.statements:
            call.since, call.seen = now, call.statements
        elif now - call.since >= self.seconds:
            call.since = None
            self.cuts += 1
            shut_down(connection.fileno())


def shut_down(fd: int) -> None:
    """Shut the socket down without closing the descriptor its owner still holds: the owner's
    wait wakes up to a closed connection."""
    sock = socket.socket(fileno=socket.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()
