"""The export process (otel_process.py): runs in on stdin, spans out to the collector.

Each message on stdin is ("run", item, folder), ("logged", database URL, run ids, folder):
runs to read from the log, or ("flush", token, timeout); a flush is
answered on stdout with (token, spans sent, spans dropped, last error). The process ends when
its input closes, after sending what it holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from smallops.errors import ConfigError
from smallops.redact import Redactor
from smallops.storage.db import get_engine
from smallops.storage.otel_backfill import logged_items
from smallops.storage.otel_export import SpanExport
from smallops.storage.otel_process import read_frame, write_frame
from smallops.storage.store import describe

#: The child's scheduling priority: lowest, so that building spans only ever takes a core the
#: calling process (and its upstream, on the same host) is not asking for. Linux's SCHED_IDLE
#: runs it only on an idle core and preempts it at once; elsewhere, the highest niceness.
NICENESS = 19


def main() -> int:
    logging.basicConfig(format="%(message)s")
    _step_back()
    try:
        export = SpanExport()
    except ConfigError as exc:
        print(f"smallops: no OpenTelemetry export: {exc.message} ({exc.hint})", file=sys.stderr)
        return 3
    source, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        message = read_frame(source)
        if message is None:
            break
        if message[0] == "run":
            _, item, folder = message
            export.offer([item], Path(folder) if folder else None)
        elif message[0] == "logged":
            _, url, runs, folder = message
            _export_logged(export, url, runs, Path(folder) if folder else None)
        elif message[0] == "flush":
            _, token, timeout = message
            export.flush(timeout)
            write_frame(answers, (token, export.sent, export.dropped, export.last_error))
            answers.flush()
    export.flush(10.0)
    export.close()
    return 0


def _export_logged(
    export: SpanExport, url: str, runs: list[tuple[Any, str, int]], folder: Path | None
) -> None:
    """Read the committed runs, given as (id, workflow, spans), from the log and queue them; a
    log that cannot be read costs only counted spans."""
    try:
        items = logged_items(get_engine(url), [run_id for run_id, _, _ in runs])
    except Exception as exc:
        why = Redactor.from_environment()(describe(exc)) or type(exc).__name__
        reason = f"the export process could not read the runs from the log: {why}"
        for _, workflow, spans in runs:
            export.drops.note(workflow, spans, folder, reason)
        return
    export.offer(items, folder)


def _step_back() -> None:
    idle = getattr(os, "SCHED_IDLE", None)
    try:
        if idle is None:
            raise OSError("no SCHED_IDLE here")
        os.sched_setscheduler(0, idle, os.sched_param(0))
    except OSError:
        with contextlib.suppress(OSError):
            os.nice(NICENESS)


if __name__ == "__main__":
    sys.exit(main())
