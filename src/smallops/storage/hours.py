"""Run starts as the rollups key them: epoch seconds, and the hour each falls in."""

from __future__ import annotations

from datetime import datetime, timezone

SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's own SQLite DateTime format


def hour_of(started: float) -> int:
    """The hour (epoch seconds) a run started, as its start is stored: to the microsecond,
    rounded as `datetime.fromtimestamp` rounds, so a start less than half a microsecond before
    the hour is in the next one, where the stored run is."""
    hour = int(started // 3600 * 3600)
    if started - hour >= 3600 - 1e-6:  # within a microsecond of the next hour: rare
        stored = datetime.fromtimestamp(started, timezone.utc).timestamp()
        hour = int(stored // 3600 * 3600)
    return hour


def epoch(value: datetime | str) -> float:
    """A stored start as epoch seconds: SQLite's text is UTC, and so is a naive datetime."""
    if isinstance(value, str):  # SQLite, read without SQLAlchemy's type
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()
