"""The live span export in a process of its own, so that telemetry never takes the GIL from calls.

Building and sending spans is pure Python: in the calling process, even sliced thin, it holds
the interpreter lock while a call thread that has its answer waits for it (a millisecond at the
99th percentile, bench/overhead.py). Here the log writer only says which runs it has just
committed (id, workflow and span count: one small message a batch, on a bounded queue); a thread
writes the messages down a pipe (the write releases the lock) to a child process,
`python -m smallops.storage.otel_child`, which reads those runs from the log itself, as
`smallops export otel` does, runs the export (otel_export.SpanExport) and notes its own drops
for `smallops status`. A log only this process can see (SQLite in memory) has its runs sent
whole instead.

The child inherits the environment, so it reads the same `OTEL_*` variables. It ends when its
input closes: when this process closes the export or exits. If it cannot be started or dies,
runs are dropped and counted here, and a new child is tried at most every `RESPAWN_SECONDS`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from smallops.storage.otel_items import described
from smallops.storage.otel_spans import content_wanted
from smallops.storage.telemetry_state import REPORT_SECONDS, DropTally

log = logging.getLogger("smallops")

QUEUE_RUNS = 2048  # runs waiting for the pipe; past that they are dropped and counted
RESPAWN_SECONDS = 10.0
_HEADER = struct.Struct(">I")
_STOP = object()


def write_frame(stream: IO[bytes], message: Any) -> None:
    """Write one message whole (a raw pipe may take a long write in parts)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        written = stream.write(view)
        view = view[written if written is not None else len(view) :]


def read_frame(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream."""
    header = _read_exactly(stream, _HEADER.size)
    data = _read_exactly(stream, _HEADER.unpack(header)[0]) if header is not None else None
    if data is None:
        return None
    return pickle.loads(data)  # written by this package's own other end, never a stranger


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class ProcessExport:
    """What the log writer offers runs to when export is on: a queue, a pipe and a child."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.sent = 0  # spans the collector accepted (as of the child's last answer)
        self.last_error: str | None = None
        self.drops = DropTally()  # spans not delivered here (the child keeps its own)
        self._dropped_there = 0
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_RUNS)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._answers: dict[int, threading.Event] = {}
        self._token = 0
        # the child's environment: the OTEL_* settings as they are now (or as given)
        self._environ = {**(os.environ if environ is None else environ), "PYTHONUNBUFFERED": "1"}
        self.content = content_wanted(self._environ)  # the child reads the same variable

    @property
    def dropped(self) -> int:
        """Spans not delivered, here and in the child."""
        return self.drops.count + self._dropped_there

    def offer(self, items: Iterable[Any], report_to: Path | None = None) -> None:
        """Queue runs for the child; never blocks: what does not fit is dropped and counted."""
        self._start()
        folder = str(report_to) if report_to is not None else None
        for item in items:
            try:
                self._queue.put_nowait(("run", item, folder))
            except queue.Full:
                self._drop(item, report_to, "the export queue was full: the collector is slow")

    def offer_logged(
        self, database_url: str, runs: list[tuple[Any, str, int]], report_to: Path | None = None
    ) -> None:
        """Have the child export runs the log writer has just committed, given as (id,
        workflow, spans): it reads them from the log itself. One small message a batch, so the
        calling process neither copies nor pickles the runs."""
        if not runs:
            return
        self._start()
        folder = str(report_to) if report_to is not None else None
        try:
            self._queue.put_nowait(("logged", database_url, runs, folder))
        except queue.Full:
            self._note_runs(runs, report_to, "the export queue was full: the collector is slow")

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until the child has sent (or dropped) every run queued so far."""
        if self._thread is None:
            return True
        with self._lock:
            self._token += 1
            token, answered = self._token, threading.Event()
            self._answers[token] = answered
        try:
            self._queue.put(("flush", token, timeout), timeout=timeout)
        except queue.Full:
            return False
        return answered.wait(None if timeout is None else timeout + 1.0)

    def close(self, timeout: float = 10.0) -> None:
        thread = self._thread
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=timeout)
            thread.join(timeout)
            self._thread = None

    def abandon(self) -> None:
        """In a forked process: let go of the parent's child without a word to it (its pipe
        is the parent's), so that the child still ends when the parent closes its end."""
        child, self._child = self._child, None
        for stream in (child.stdin, child.stdout) if child is not None else ():
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()  # raw: nothing buffered is written on the way out

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._pipe, name="smallops-otel-pipe", daemon=True)
                thread.start()
                self._thread = thread

    def _pipe(self) -> None:
        """Move queued messages down the pipe; a write blocks only this thread."""
        while True:
            try:
                message = self._queue.get(timeout=REPORT_SECONDS)
            except queue.Empty:
                self.drops.report()
                continue
            if message is _STOP:
                self._stop_child()
                self.drops.report(force=True)
                self._release_waiters()
                return
            child = self._ensure_child()
            try:
                if child is None or child.stdin is None:
                    raise BrokenPipeError
                write_frame(child.stdin, message)
            except (BrokenPipeError, OSError, pickle.PicklingError):
                self._child_lost(message)

    def _ensure_child(self) -> subprocess.Popen[bytes] | None:
        child = self._child
        if child is not None and child.poll() is None:
            return child
        if time.monotonic() - self._started_at < RESPAWN_SECONDS and self._started_at:
            return None
        self._started_at = time.monotonic()
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "smallops.storage.otel_child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,  # raw pipes: a forked process can close them without writing
                close_fds=True,
                env=self._environ,
            )
        except OSError as exc:
            self.last_error = f"could not start the export process: {exc.strerror}"
            log.error("smallops: %s", self.last_error)
            return None
        self._child = child
        threading.Thread(
            target=self._listen, args=(child,), name="smallops-otel-answers", daemon=True
        ).start()
        return child

    def _listen(self, child: subprocess.Popen[bytes]) -> None:
        """The child's answers to flushes: its counts so far."""
        assert child.stdout is not None
        while True:
            answer = read_frame(child.stdout)
            if answer is None:
                return
            token, sent, dropped, last_error = answer
            self.sent, self._dropped_there = sent, dropped
            if last_error:
                self.last_error = last_error
            with self._lock:
                event = self._answers.pop(token, None)
            if event is not None:
                event.set()

    def _child_lost(self, message: Any) -> None:
        reason = "the export process is not running"
        if message[0] == "run":
            self._drop(message[1], Path(message[2]) if message[2] else None, reason)
        elif message[0] == "logged":
            self._note_runs(message[2], Path(message[3]) if message[3] else None, reason)
        else:
            with self._lock:
                event = self._answers.pop(message[1], None)
            if event is not None:
                event.set()  # nothing more will be sent: the flush is over

    def _stop_child(self) -> None:
        child = self._child
        if child is None:
            return
        with contextlib.suppress(OSError):
            if child.stdin is not None:
                child.stdin.close()  # the child sends what it has, then ends
        try:
            child.wait(10.0)
        except subprocess.TimeoutExpired:
            child.kill()
        self._child = None

    def _release_waiters(self) -> None:
        with self._lock:
            waiting, self._answers = list(self._answers.values()), {}
        for event in waiting:
            event.set()

    def _drop(self, item: Any, folder: Path | None, reason: str) -> None:
        self._note(*described(item), folder, reason)

    def _note_runs(
        self, runs: list[tuple[Any, str, int]], folder: Path | None, reason: str
    ) -> None:
        for _, workflow, spans in runs:
            self._note(workflow, spans, folder, reason)

    def _note(self, workflow: Any, spans: int, folder: Path | None, reason: str) -> None:
        self.drops.note(workflow, spans, folder, reason)
        self.last_error = reason
