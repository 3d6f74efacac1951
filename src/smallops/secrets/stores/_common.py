"""What the network stores share: a short timeout, and store text made safe to show.

A fetch runs when a cached key expires, on the path of a model call: a store that does not
answer must cost seconds, not a hung worker, so every store waits at most `timeout` seconds.
"""

from __future__ import annotations

from datetime import datetime, timezone

from smallops.secrets.base import FETCH_TIMEOUT


class Timed:
    """A store's timeout: the one it was made with, else the [secrets] fetch_timeout of the
    fetch under way (the key cache sets it in the fetching thread)."""

    _given_timeout: float | None = None

    @property
    def timeout(self) -> float:
        given = self._given_timeout
        return given if given is not None else FETCH_TIMEOUT.get()


def one_line(text: str, limit: int = 160) -> str:
    """A store's own error text, as one short line (it never carries the secret's value, but
    it may be long or span lines)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_rfc3339(text: object) -> datetime | None:
    """A timestamp as Vault and other Go servers write it (`2024-05-01T10:00:00.123456789Z`),
    or None. Python 3.10 reads neither the Z nor more than six fractional digits."""
    if not isinstance(text, str) or not text:
        return None
    head, _, tail = text.replace("Z", "+00:00").partition(".")
    if tail:
        digits = len(tail) - len(tail.lstrip("0123456789"))
        tail = "." + tail[:digits][:6].ljust(6, "0") + tail[digits:]
    try:
        moment = datetime.fromisoformat(head + tail)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
