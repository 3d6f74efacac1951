"""What the OpenTelemetry export could not deliver, kept where `smallops status` can read it.

The export runs in the processes that call models; `status` runs in another. Each process that
dropped spans keeps one small JSON file, `.smallops/telemetry/otel-<pid>.json`, beside the spool:
its spans not delivered per workflow since it started, and its last error with the time. The
export's thread rewrites it at most once a second, and only after a drop, so a healthy export
never touches the disk. `status` adds up the files written in the last day.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from smallops.jsonl import replace_file

FOLDER = "telemetry"
RECENT_HOURS = 24  # a process's file counts in `status` this long after its last drop


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
