"""How each secret reference fared in the processes that fetch keys, where `status` can read it.

The processes that call models fetch keys; `smallops status` runs in another. Each process
keeps one small JSON file, `.smallops/secrets/keys-<pid>.json`: per reference, its last good
fetch, whether a cached key is being served stale (since when, and until when), and the last
problem. Never a value, nor anything derived from one. It is rewritten only when a fetch ends
(once per cache_ttl, or per retry while a store is down), never on the request path.
`status` reads the files written in the last day, the newest report per reference winning.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from smallops.jsonl import replace_file

FOLDER = "secrets"
RECENT_HOURS = 24  # a process's file counts in `status` this long after it last changed
#: What a report may hold: nothing else is written, so no value can slip in by a new field.
FIELDS = (
    "reference",
    "store",
    "fetches",
    "last_ok_at",
    "version",
    "stale_since",
    "serving_until",
    "problem",
    "problem_at",
    "unavailable",
)


def health_folder(state_dir: Path) -> Path:
    return state_dir / FOLDER


def write_health(folder: Path, reports: dict[str, dict[str, Any]]) -> bool:
    """Replace this process's file (whole, never half written); False if the disk refused."""
    state = {
        "pid": os.getpid(),
        "updated_at": time.time(),
        "references": {
            name: {key: report.get(key) for key in FIELDS} for name, report in reports.items()
        },
    }
    if not replace_file(folder / f"keys-{os.getpid()}.json", state):
        return False
    if folder not in _swept:
        _swept.add(folder)
        _sweep(folder)
    return True


_swept: set[Path] = set()


def _sweep(folder: Path) -> None:
    """Remove the files of processes silent for longer than status looks back (a process run
    from cron every minute would otherwise leave a file a minute); once per process."""
    since = time.time() - RECENT_HOURS * 3600
    for old in folder.glob("keys-*.json"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < since:
                old.unlink()


def read_health(folder: Path, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per reference, the newest report of the processes of the last day (epoch seconds), with
    `processes`: how many of them reported on it, and `last_ok_at` the newest good fetch of any."""
    since = (time.time() if now is None else now) - RECENT_HOURS * 3600
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("keys-*.json")) if folder.is_dir() else ():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            updated = float(state["updated_at"])
            references = dict(state["references"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a file being replaced, or not one of ours
        if updated < since:
            continue
        for name, report in references.items():
            if not isinstance(report, dict):
                continue
            report = _clean(report)
            report["as_of"] = _as_of(report)
            seen = found.get(str(name))
            if seen is None:
                found[str(name)] = {**report, "processes": 1}
                continue
            last_ok = max(
                (t for t in (seen["last_ok_at"], report["last_ok_at"]) if t), default=None
            )
            newest = report if report["as_of"] > seen["as_of"] else seen
            found[str(name)] = {**newest, "processes": seen["processes"] + 1, "last_ok_at": last_ok}
    return found


#: The fields that are times (epoch seconds), and the one that is a count.
_TIMES = ("last_ok_at", "stale_since", "serving_until", "problem_at")


def _clean(report: dict[str, Any]) -> dict[str, Any]:
    """A report's fields as status uses them, whatever the file held (another version's
    file, or one edited by hand): times as numbers or None, text as text, a count, a flag."""
    clean: dict[str, Any] = {}
    for key in FIELDS:
        value = report.get(key)
        if key in _TIMES or key == "fetches":
            seconds = _seconds(value)
            value = int(seconds or 0) if key == "fetches" else seconds
        elif key == "unavailable":
            value = value is True
        elif value is not None:
            value = str(value)
        clean[key] = value
    return clean


def _seconds(value: object) -> float | None:
    """A number a time (or count) can be: not a flag, not negative, before the year 5138."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value < 1e11 else None


def _as_of(report: dict[str, Any]) -> float:
    """When a report last learnt something: its last good fetch or its last problem."""
    times = [t for t in (report.get("last_ok_at"), report.get("problem_at")) if t]
    return max((float(t) for t in times if isinstance(t, int | float)), default=0.0)
