"""A dashboard's time range from its query (`?since=30d&until=2026-11-30`), in whole hours.

The rollups are hourly, so a range is widened to whole hours and never reads the runs: a
duration in days or weeks counts whole UTC days, today included (`7d` is today and the six days
before); a date is that UTC day (as `until`, up to its end); a time is rounded out to its hour.
Anything else is an InputError (a 400), never a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from smallops.errors import InputError

DEFAULT_SINCE = "30d"
#: The longest range a page shows, in days: a year of daily figures.
MAX_DAYS = 366
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
_SPAN = re.compile(r"(\d{1,6})\s*(m|h|d|w)")
_HINT = "use e.g. 24h, 7d, 30d, 2w, or a date such as 2026-11-01 (UTC)"
_MAX_TEXT = 64


@dataclass(frozen=True)
class Range:
    """[since, until): whole hours, UTC."""

    since: datetime
    until: datetime

    @property
    def days(self) -> list[str]:
        """The UTC days the range touches, as YYYY-MM-DD, oldest first."""
        first = self.since.replace(hour=0)
        last = (self.until - HOUR).replace(hour=0)
        count = (last - first) // DAY + 1
        # isoformat, not strftime: "%Y" is not padded to four digits before the year 1000
        return [(first + i * DAY).date().isoformat() for i in range(count)]

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "days": len(self.days)}


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floored = floor_hour(moment)
    return floored if floored == moment else floored + HOUR


def midnight(moment: datetime) -> datetime:
    return floor_hour(moment).replace(hour=0)


def parse_range(since: str | None, until: str | None, now: datetime) -> Range:
    """The range a page's `since` and `until` ask for (until: now, to the end of this hour)."""
    start = _moment(since or DEFAULT_SINCE, "since", now, end=False)
    end = floor_hour(now) + HOUR
    if until:
        end = _moment(until, "until", now, end=True)
    if start >= end:
        raise InputError(
            f"since ({start:%Y-%m-%d %H:%M}) is not before until ({end:%Y-%m-%d %H:%M}) UTC",
            hint="give a since earlier than the until",
        )
    if end - start > MAX_DAYS * DAY:
        raise InputError(f"the range is longer than {MAX_DAYS} days", hint="ask for a year or less")
    return Range(start, end)


def _moment(value: str, name: str, now: datetime, *, end: bool) -> datetime:
    text = value.strip()
    shown = value[:_MAX_TEXT] + ("…" if len(value) > _MAX_TEXT else "")
    bad = InputError(f"{name}={shown!r} is not a duration or a date", hint=_HINT)
    if len(text) > _MAX_TEXT or "\x00" in text:
        raise bad
    span = _SPAN.fullmatch(text.lower())
    try:
        if span:
            count, unit = int(span.group(1)), span.group(2)
            if unit in ("d", "w"):
                days = count * (7 if unit == "w" else 1)
                start = midnight(now) - (days - 1) * DAY
                return start + DAY if end else start
            delta = timedelta(hours=count) if unit == "h" else timedelta(minutes=count)
            return floor_hour(now - delta) + (HOUR if unit == "h" else timedelta(0))
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
            return day + DAY if end else day
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise bad from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return ceil_hour(moment) if end else floor_hour(moment)
    except OverflowError:
        raise bad from None
