"""Moments as people type them: `30m`, `24h`, `7d`, `2w` ago, or an ISO date or time.

One parser for the CLI's `--since` and the web's `?since=` / `?until=`, so both read a value
the same way and refuse it with the same one-line error.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from smallops.errors import InputError

_SPAN = re.compile(r"(\d+)\s*(m|h|d|w)")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def moment(
    value: str, label: str, *, end_of_day: bool = False, now: datetime | None = None
) -> datetime:
    """The moment `value` names, aware (UTC unless it says otherwise). With `end_of_day`, a bare
    date means the end of that day (an `until` of 2026-11-30 takes in the 30th). InputError
    names `label` (e.g. "--since '7q'") when it is neither a span nor a date, or names no moment
    between the years 1 and 9999 in UTC (which is what a database compares it in)."""
    text = value.strip()
    match = _SPAN.fullmatch(text.lower())
    try:
        if match:
            delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
            return (now or datetime.now(timezone.utc)) - delta
        if end_of_day and _DATE.fullmatch(text):
            day = date.fromisoformat(text) + timedelta(days=1)
            return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        when = datetime.fromisoformat(text)
        if when.tzinfo:
            when.astimezone(timezone.utc)  # what the database compares: OverflowError if none
    except OverflowError:
        where = "reaches back before the year 1" if match else "is outside the years 1 to 9999"
        raise InputError(
            f"{label} {where}", hint="use a shorter span, e.g. 3650d, or a date such as 2020-01-01"
        ) from None
    except ValueError:
        raise InputError(
            f"{label} is not a duration or a date", hint="use e.g. 30m, 24h, 7d, 2w or 2026-11-01"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
