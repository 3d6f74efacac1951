"""What the OpenTelemetry export could not deliver, kept where `smallops status` can read it.

The export runs in the processes that call models; `status` runs in another. Each process that
dropped spans keeps one small JSON file, `.smallops/telemetry/otel-<pid>.json`, beside the spool:
its spans not delivered per workflow since it started, and its last error with the time. The
export's thread rewrites it at most once a second, and only after a drop, so a healthy export
never touches the disk. `status` adds up the files written in the last day.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from smallops.jsonl import replace_file

log = logging.getLogger("smallops")

FOLDER = "telemetry"
RECENT_HOURS = 24  # a process's file counts in `status` this long after its last drop
REPORT_SECONDS = 1.0  # a process's file is rewritten at most this often


class DropTally:
    """The spans this process could not deliver: counted as they are dropped (from any
    thread), and written per project and workflow to the file `status` reads, at most once a
    second and never while nothing was dropped."""

    def __init__(self) -> None:
        self.count = 0
        self.last_error: str | None = None
        self.last_at: float | None = None
        self._lock = threading.Lock()
        self._by_folder: dict[Path, Counter[str]] = {}
        self._unreported = False
        self._reported_at = 0.0

    def note(self, workflow: Any, spans: int, folder: Path | None, reason: str) -> None:
        with self._lock:
            self.count += spans
            self.last_error, self.last_at = reason, time.time()
            if folder is not None:
                self._by_folder.setdefault(folder, Counter())[str(workflow)] += spans
                self._unreported = True

    def report(self, force: bool = False) -> None:
        """Rewrite the files of the projects that dropped spans since the last report."""
        now = time.monotonic()
        if not self._unreported or (not force and now - self._reported_at < REPORT_SECONDS):
            return
        with self._lock:
            drops = {folder: dict(counts) for folder, counts in self._by_folder.items()}
            error, at, self._unreported = self.last_error, self.last_at, False
        self._reported_at = now
        for folder, counts in drops.items():
            if not write_drops(folder, counts, error, at):
                log.warning("smallops: could not note dropped spans in %s", folder)


def telemetry_folder(state_dir: Path) -> Path:
    return state_dir / FOLDER


def write_drops(
    folder: Path, dropped: dict[str, int], last_error: str | None, last_at: float | None
) -> bool:
    """Replace this process's file (whole, never half written); False if the disk refused."""
    state = {
        "pid": os.getpid(),
        "dropped": dropped,
        "last_error": last_error,
        "last_at": last_at,
        "updated_at": time.time(),
    }
    return replace_file(folder / f"otel-{os.getpid()}.json", state)


def read_drops(folder: Path, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per workflow, the spans the processes of the last day could not deliver, how many of
    those processes there were, and the newest error with its time (epoch seconds)."""
    since = (time.time() if now is None else now) - RECENT_HOURS * 3600
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("otel-*.json")) if folder.is_dir() else ():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            updated = float(state["updated_at"])
            dropped = {str(k): int(v) for k, v in dict(state["dropped"]).items()}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a file being replaced, or not one of ours
        if updated < since:
            continue
        last_at = state.get("last_at")
        for workflow, spans in dropped.items():
            if spans <= 0:
                continue
            entry = found.setdefault(
                workflow, {"spans": 0, "processes": 0, "last_error": None, "last_at": None}
            )
            entry["spans"] += spans
            entry["processes"] += 1
            if isinstance(last_at, int | float) and (
                entry["last_at"] is None or last_at > entry["last_at"]
            ):
                entry["last_at"], entry["last_error"] = float(last_at), state.get("last_error")
    return found
