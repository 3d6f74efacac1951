"""Evidence as a person writes it: counts, plurals and ages."""

from __future__ import annotations

from datetime import datetime


def count(n: int, noun: str) -> str:
    """`1 call`, `1,204 calls`."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def ago(moment: datetime, now: datetime) -> str:
    """How long before `now`: "just now", "12 minutes ago", "3 hours ago", "45 days ago"."""
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            return f"{count(seconds // size, unit)} ago"
    return "just now"
