"""The background writer: the request path only enqueues; a thread batches rows into the log.

While the database is unreachable, batches go to the spool and the thread probes the database
every few seconds; once it answers, the spool is replayed. Normal exit and SIGTERM drain the
queue (into the database, or the spool if it is down), so every completed call is kept.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import threading
import time
from typing import Any

from smallops.config import Settings
from smallops.plan import PromptVersion
from smallops.redact import Redactor
from smallops.storage.db import log_database, safe_url
from smallops.storage.rows import prompt_row, review_row, run_row
from smallops.storage.spool import Spool, spool_folder
from smallops.storage.store import RowStore

log = logging.getLogger("smallops")

BATCH = 2000
LINGER = 0.05  # seconds to let a batch gather: fewer transactions, fewer wake-ups
YIELD_EVERY = 0.0002  # seconds of encoding before the writer hands the GIL back
PROBE_EVERY = 2.0  # seconds between attempts to reach a database that is down
_STOP = object()


class Writer:
    """Owns one database's queue, writing thread, row store and spool."""

    def __init__(self, store: RowStore, spool: Spool, *, label: str = "database") -> None:
        self.store = store
        self.spool = spool
        self.label = label
        self.redact = Redactor.from_environment()
        self.written = 0
        self.spooled = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._seen_prompts: set[str] = set()
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._replay_pending = True  # spool left by earlier processes
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    @property
    def healthy(self) -> bool:
        return self._down_since is None

    def submit(self, record: dict[str, Any]) -> None:
        """Enqueue one run record; never blocks on the database."""
        if self._thread is None:
            self._start()
        self._queue.put(record)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything submitted so far is in the database or the spool."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Drain the queue and stop the thread."""
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self.spool.close()

    def _after_fork(self) -> None:
        self._queue = queue.SimpleQueue()
        self._thread = None
        self._start_lock = threading.Lock()
        self.spool.forget()
        self.store.forget()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._loop, name="smallops-writer", daemon=True)
                thread.start()
                self._thread = thread

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=PROBE_EVERY)
            except queue.Empty:
                self._maybe_recover()
                continue
            if isinstance(item, dict) and self._queue.qsize() < BATCH:
                time.sleep(LINGER)
            records, markers, stop = [], [], False
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    records.append(item)
                if stop or len(records) >= BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if records:
                self._write(records)
            elif self._replay_pending or not self.healthy:
                self._maybe_recover()
            for marker in markers:
                marker.set()
            if stop:
                return

    def _write(self, records: list[dict[str, Any]]) -> None:
        runs, prompts, reviews = [], [], []
        yielded = time.perf_counter()
        for record in records:
            if time.perf_counter() - yielded > YIELD_EVERY:
                time.sleep(0)  # let the calling threads have the GIL: they are latency-bound
                yielded = time.perf_counter()
            try:
                runs.append(run_row(record, self.redact))
                review = review_row(record, self.redact)
                if review is not None:
                    reviews.append(review)
            except Exception:  # never let one odd record take the batch down
                log.exception("smallops: could not encode run %s", record.get("id"))
                continue
            version: PromptVersion = record["plan"]["prompt"]
            if version.id not in self._seen_prompts:
                self._seen_prompts.add(version.id)
                prompts.append(prompt_row(version))
        self._maybe_recover()
        if self.healthy:
            try:
                self.store.write(runs, prompts, reviews)
                self.written += len(runs)
                return
            except Exception as exc:
                self._went_down(exc)
        self._to_spool(runs, prompts, reviews)

    def _to_spool(self, runs: list[Any], prompts: list[Any], reviews: list[Any]) -> None:
        try:
            self.spool.append(runs, prompts, reviews)
            self.spooled += len(runs)
            self._replay_pending = True
        except OSError as exc:  # nowhere left to keep them: say so loudly
            log.error("smallops: lost %d run records, spool not writable: %s", len(runs), exc)

    def _went_down(self, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            reason = self.redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
            log.warning(
                "smallops: %s unreachable (%s); keeping records in %s until it returns",
                self.label,
                reason,
                self.spool.folder,
            )
        self._next_probe = time.monotonic() + PROBE_EVERY

    def _maybe_recover(self) -> None:
        """Probe a database that is down; replay the spool once it (or anything) is pending."""
        if not self.healthy and time.monotonic() < self._next_probe:
            return
        if self.healthy and not self._replay_pending:
            return
        try:
            if not self.healthy:
                self.store.ping()
            self.spool.close()
            replayed = self.spool.replay(self.store.write)
        except Exception as exc:
            self._went_down(exc)
            return
        if replayed or self._down_since is not None:
            log.warning("smallops: %s is back; replayed %d spooled runs", self.label, replayed)
        self.written += replayed
        self._down_since = None
        self._replay_pending = False


_writers: dict[str, Writer] = {}
_lock = threading.Lock()


def writer_for(settings: Settings) -> Writer:
    """The writer for the settings' database, shared by every workflow in this process."""
    url, engine = log_database(settings)
    with _lock:
        if url not in _writers:
            spool = Spool(spool_folder(settings.spool_dir, url))
            _writers[url] = Writer(RowStore(engine), spool, label=safe_url(url))
            _install_exit_hooks()
        return _writers[url]


def replay_spool(settings: Settings) -> int:
    """Write the runs that earlier processes spooled while the database was down."""
    url, engine = log_database(settings)
    spool = Spool(spool_folder(settings.spool_dir, url))
    if not spool.pending():
        return 0
    store = RowStore(engine)
    try:
        return spool.replay(store.write)
    finally:
        store.close()


def flush_all(timeout: float | None = 30.0) -> bool:
    """Wait until every writer has written (or spooled) what it was given."""
    results = [writer.flush(timeout) for writer in list(_writers.values())]  # flush them all
    return all(results)


def close_all(timeout: float | None = 30.0) -> None:
    for writer in list(_writers.values()):
        writer.close(timeout)


_hooks_installed = False


def _install_exit_hooks() -> None:
    """Drain at exit; make SIGTERM an orderly exit when nobody else handles it."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(close_all)
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _exit_on_sigterm)
        except (ValueError, OSError):  # pragma: no cover - embedded interpreters
            pass
    os.register_at_fork(after_in_child=_restart_after_fork)


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _restart_after_fork() -> None:
    """A forked child has no writer threads: each writer starts afresh on its first record."""
    for writer in _writers.values():
        writer._after_fork()


def reset() -> None:
    """Drain and forget every writer (tests, and apps that switch databases)."""
    with _lock:
        close_all()
        _writers.clear()
