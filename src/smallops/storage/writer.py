"""The background writer: the request path only enqueues; a thread batches rows into the log.

Every record ends in exactly one of four places, and the writer counts each (`account()`):
- written: committed to the database;
- spooled: kept in a local file while the database is unreachable, replayed when it returns;
- set aside: refused by the database for its content, kept in the quarantine with the reason;
- lost: none of the above could be done (the spool's disk is full), said loudly.

Writes are time-bounded (store.py), so a stalled database turns into spooling within seconds.
Normal exit and SIGTERM drain the queue; if the thread is stuck past its bound, what is still
queued is spooled from the exiting thread, and whatever the stuck thread held is counted lost.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

from smallops.config import LogTarget, Telemetry
from smallops.records import PromptVersion, RunRecord
from smallops.redact import Redactor
from smallops.storage import label_rollups, otel_backfill, otel_export, otel_items
from smallops.storage.db import log_database, safe_url
from smallops.storage.otel_process import ProcessExport
from smallops.storage.quarantine import Quarantine, quarantine_folder
from smallops.storage.rows import Parts, encode, prompt_row
from smallops.storage.spool import Spool, spool_folder
from smallops.storage.store import RowBatch, RowStore, Unreachable, land
from smallops.storage.telemetry_state import telemetry_folder

log = logging.getLogger("smallops")

BATCH = 2000
LINGER = 0.05  # seconds to let a batch gather: fewer transactions, fewer wake-ups
YIELD_EVERY = 0.0002  # seconds of encoding before the writer hands the GIL back
#: Records queued behind the batch in hand past which the writer stops handing the GIL back:
#: under a busy event loop each yield costs a switch interval (5 ms), which caps the writer
#: below the request rate, and a queue that only grows holds every record in memory.
CATCH_UP = 500
PROBE_EVERY = 2.0  # seconds between attempts to reach a database that is down
_STOP = object()


@dataclass(frozen=True)
class Account:
    """Where the records given to a writer went."""

    submitted: int = 0
    written: int = 0
    spooled: int = 0
    set_aside: int = 0
    lost: int = 0

    def since(self, before: Account) -> Account:
        """What happened between two readings."""
        return Account(*(getattr(self, f.name) - getattr(before, f.name) for f in fields(self)))


class Writer:
    """Owns one database's queue, writing thread, row store, spool and quarantine."""

    def __init__(
        self,
        store: RowStore,
        spool: Spool,
        *,
        quarantine: Quarantine | None = None,
        label: str = "database",
        redact: Redactor | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.store = store
        self.telemetry = telemetry  # smallops.toml's [telemetry], where OTEL_* are silent
        self.spool = spool
        self.quarantine = quarantine or Quarantine(quarantine_folder(spool.folder))
        self.label = label
        self.redact = redact or Redactor.from_environment()
        self.submitted = 0
        self.written = 0
        self.spooled = 0
        self.set_aside = 0
        self.lost = 0
        self.lost_reported = 0  # lost records a command has already told the user about
        self.down_reason: str | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._seen_prompts: set[str] = set()
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._replay_pending = True  # spool left by earlier processes
        self._in_hand = 0  # records the thread has taken and not yet put anywhere
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def healthy(self) -> bool:
        return self._down_since is None

    @property
    def backlog(self) -> int:
        """Records submitted and not yet written, spooled or set aside (and any flush marker)."""
        return self._queue.qsize() + self._in_hand

    def account(self) -> Account:
        return Account(self.submitted, self.written, self.spooled, self.set_aside, self.lost)

    def submit(self, record: RunRecord) -> None:
        """Enqueue one run record; never blocks on the database."""
        if self._thread is None:
            self._start()
        self.submitted += 1
        self._queue.put(record)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything submitted so far is written, spooled or set aside."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Drain the queue and stop the thread (a later submit starts a new one).

        Waits as long as a bounded write and the spooling of the rest can take; past that, the
        records still queued are spooled from this thread and the thread's own batch is counted
        lost, so exit is never held hostage by a database that does not answer.
        """
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(2 * self.store.timeout + 5 if timeout is None else timeout)
        if thread.is_alive():
            self._abandon()
        self.spool.close()
        self.quarantine.close()
        if not thread.is_alive():  # a stuck thread may still be using it
            self.store.close()
        self._thread = None

    def _abandon(self) -> None:
        """Spool what the stuck thread has not taken; count what it holds as lost."""
        records = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, RunRecord):
                records.append(item)
            elif isinstance(item, threading.Event):
                item.set()
        held, self._in_hand = self._in_hand, 0
        if held:
            self.lost += held
            log.error(
                "smallops: the log writer did not finish in time; %d run records it was "
                "writing may not be recorded",
                held,
            )
        if records:
            batch, _ = self._encode(records)
            self._to_spool(batch, Spool(self.spool.folder), len(records))

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
                self._safely(self._maybe_recover)
                continue
            if isinstance(item, RunRecord) and self._queue.qsize() < BATCH:
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
                self._in_hand = len(records)
                try:
                    self._write(records)
                except Exception:
                    log.exception("smallops: the log writer hit an unexpected error")
                    self._rescue(records)
                self._in_hand = 0
            elif self._replay_pending or not self.healthy:
                self._safely(self._maybe_recover)
            for marker in markers:
                marker.set()
            if stop:
                return

    def _rescue(self, records: list[RunRecord]) -> None:
        """After an unexpected error: spool the records to a file of their own, or count them
        as lost; never drop them without a word."""
        try:
            batch, refused = self._encode(records)
            for record, reason in refused:
                self._set_aside_record(record, reason)
            self._to_spool(batch, Spool(self.spool.folder), len(batch.runs))
        except Exception as exc:
            self.lost += len(records)
            log.error("smallops: lost %d run records after an error: %s", len(records), exc)

    def _safely(self, work: Any, *args: Any) -> None:
        """Run one step; a bug in it is logged, and never stops the thread."""
        try:
            work(*args)
        except Exception:
            log.exception("smallops: the log writer hit an unexpected error")

    def _write(self, records: list[RunRecord]) -> None:
        batch, refused = self._encode(records)
        for record, reason in refused:
            self._set_aside_record(record, reason)
        self._maybe_recover()
        if self.healthy:
            set_aside: set[Any] = set()
            try:
                self.written += land(self.store, batch, self._noting(set_aside))
                self._safely(self._export, batch, records, set_aside)
                return
            except Unreachable as exc:
                self._went_down(exc)
        self._to_spool(batch, self.spool, len(batch.runs))

    def _noting(self, ids: set[Any]) -> Any:
        """`_set_aside`, also noting the ids of the runs it set aside."""

        def set_aside(batch: RowBatch, reason: str) -> None:
            ids.update(row[0] for row in batch.runs)
            self._set_aside(batch, reason)

        return set_aside

    def _land_replayed(self, batch: RowBatch) -> int:
        """Write a batch from the spool; its runs go to the span export as any others do."""
        set_aside: set[Any] = set()
        landed = land(self.store, batch, self._noting(set_aside))
        self._safely(self._export, batch, None, set_aside)
        return landed

    def _export(
        self, batch: RowBatch, records: list[RunRecord] | None, set_aside: set[Any]
    ) -> None:
        """Hand the runs just committed to the span export, if it is on (never waits). Runs
        replayed from the spool have no records: their prompt parameters come from the log."""
        export = otel_export.live_export(self.telemetry)
        if export is None:
            return
        report_to = telemetry_folder(self.spool.folder.parent.parent)
        url = self.store.engine.url
        if isinstance(export, ProcessExport) and url.database not in (None, "", ":memory:"):
            # the child reads the committed runs from the log itself
            runs = [otel_items.logged_run(run) for run in batch.runs if run[0] not in set_aside]
            export.offer_logged(url.render_as_string(hide_password=False), runs, report_to)
            return
        params: dict[Any, dict[str, Any] | None]
        if records is not None:
            params = {record.id: record.facts.prompt.params for record in records}
        else:
            params = otel_backfill.prompt_params(self.store.engine, batch.runs)
        committed = (
            otel_items.Committed(run, batch.parts, params.get(run[0]), export.content)
            for run in batch.runs
            if run[0] not in set_aside
        )
        if isinstance(export, ProcessExport):  # a log in memory: the child is sent the runs
            export.offer((run.item() for run in committed), report_to=report_to)
        else:  # the export thread reads each run back as it comes to it
            export.offer(committed, report_to=report_to)

    def _encode(self, records: list[RunRecord]) -> tuple[RowBatch, list[tuple[RunRecord, str]]]:
        """Rows for the records, and the records that could not be made into rows (and why)."""
        batch, refused, parts = RowBatch(), [], Parts()
        yielded = time.perf_counter()
        for record in records:
            if time.perf_counter() - yielded > YIELD_EVERY:
                if self._queue.qsize() < CATCH_UP:  # behind: catch up first (see CATCH_UP)
                    time.sleep(0)  # let the calling threads have the GIL: they are latency-bound
                yielded = time.perf_counter()
            try:
                run, review = encode(record, self.redact, parts)
            except Exception as exc:
                refused.append((record, f"could not be encoded: {type(exc).__name__}: {exc}"))
                continue
            batch.runs.append(run)
            if review is not None:
                batch.reviews.append(review)
            version: PromptVersion = record.facts.prompt
            if version.id not in self._seen_prompts:
                self._seen_prompts.add(version.id)
                batch.prompts.append(prompt_row(version))
        batch.parts = list(parts.values())
        return batch, refused

    def _to_spool(self, batch: RowBatch, spool: Spool, count: int) -> None:
        """Spool the batch whole; if the disk cannot take it whole, keep as many runs as fit,
        each with its review item; count the rest as lost, loudly."""
        try:
            spool.append(batch)
            kept = count
        except OSError as exc:
            kept, problem = 0, exc
            for unit in batch.units():
                try:
                    spool.append(unit)
                    kept += len(unit.runs)
                except OSError as again:
                    problem = again
            log.error(
                "smallops: lost %d run records, spool not writable: %s", count - kept, problem
            )
        self.lost += count - kept
        self.spooled += kept
        self._replay_pending = self._replay_pending or kept > 0

    def _set_aside(self, batch: RowBatch, reason: str) -> None:
        reason = self.redact(reason) or reason
        try:
            self.quarantine.add(batch, reason)
        except OSError as exc:
            self.lost += len(batch.runs)
            log.error(
                "smallops: lost %d run records, quarantine not writable: %s", len(batch.runs), exc
            )
            return
        self.set_aside += len(batch.runs)
        ids = ", ".join(str(row[0]) for row in batch.runs) or "a prompt version"
        log.warning(
            "smallops: the %s refused %s (%s); set aside in %s",
            self.label,
            ids,
            reason,
            self.quarantine.folder,
        )

    def _set_aside_record(self, record: RunRecord, reason: str) -> None:
        """A record that could not even be made into a row: kept as a note with its id."""
        run = (record.id, record.facts.workflow)
        self._set_aside(RowBatch(runs=[run]), reason)

    def _went_down(self, exc: Exception) -> None:
        reason = self.redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.down_reason = reason
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
            replayed = self.spool.replay(self._land_replayed, self._set_aside_bytes)
        except Exception as exc:
            self._went_down(exc)
            return
        if replayed or self._down_since is not None:
            log.warning("smallops: %s is back; replayed %d spooled runs", self.label, replayed)
        self.written += replayed
        self._down_since = None
        self.down_reason = None
        self._replay_pending = False

    def _set_aside_bytes(self, data: bytes, source: Any, reason: str) -> None:
        try:
            self.quarantine.add_bytes(data, source, reason)
        except OSError as exc:
            log.error("smallops: could not keep a damaged spool frame of %s: %s", source, exc)
            return
        log.warning("smallops: %s in %s; set aside in %s", reason, source, self.quarantine.folder)


_writers: dict[str, Writer] = {}
_lock = threading.Lock()


def writer_for(target: LogTarget) -> Writer:
    """The writer for the log database, shared by every workflow in this process."""
    url, engine = log_database(target)
    with _lock:
        if url not in _writers:
            spool = Spool(spool_folder(target.spool_dir, url))
            _writers[url] = Writer(
                RowStore(engine, target.write_timeout),
                spool,
                label=safe_url(url),
                redact=Redactor.from_environment(names=target.key_variables),
                telemetry=target.telemetry,
            )
            _install_exit_hooks()
        return _writers[url]


def replay_spool(target: LogTarget) -> int:
    """Write the runs that earlier processes spooled while the database was down; rows the
    database refuses are set aside, never in the way. Raises Unreachable if it is down."""
    url, engine = log_database(target)
    spool = Spool(spool_folder(target.spool_dir, url))
    if not spool.pending():
        return 0
    quarantine = Quarantine(quarantine_folder(spool.folder))
    store = RowStore(engine, target.write_timeout)
    redact = Redactor.from_environment(names=target.key_variables)

    def set_aside(batch: RowBatch, reason: str) -> None:
        quarantine.add(batch, redact(reason) or reason)

    try:
        return spool.replay(lambda batch: land(store, batch, set_aside), quarantine.add_bytes)
    finally:
        store.close()
        quarantine.close()


def quarantine_for(target: LogTarget) -> Quarantine:
    """The quarantine of the log database (what it refused, with the reasons)."""
    url, _ = log_database(target)
    return Quarantine(quarantine_folder(spool_folder(target.spool_dir, url)))


def flush_all(timeout: float | None = 30.0) -> bool:
    """Wait until every writer has written (or spooled) what it was given."""
    results = [writer.flush(timeout) for writer in list(_writers.values())]  # flush them all
    return all(results)


def settle_log() -> int:
    """Drain every writer; the run records lost since last asked (none, normally)."""
    lost = 0
    for writer in list(_writers.values()):
        writer.close()
        lost += writer.lost - writer.lost_reported
        writer.lost_reported = writer.lost
    return lost


def close_all(timeout: float | None = None) -> None:
    for writer in list(_writers.values()):
        writer.close(timeout)
    otel_export.reset()  # after the writers: their last runs are queued for export by now


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
    otel_export.after_fork()


def reset() -> None:
    """Drain and forget every writer (tests, and apps that switch databases)."""
    with _lock:
        close_all()
        _writers.clear()
    label_rollups.forget_versions()
