"""How the dashboards write numbers: rates as percentages, money in dollars, latency in ms or s,
and "—" for what is unknown (never 0 for a cost nobody priced)."""

from __future__ import annotations

from urllib.parse import quote

UNKNOWN = "—"


def pct(value: float | None, digits: int = 1) -> str:
    return UNKNOWN if value is None else f"{value * 100:.{digits}f}%"


def change(value: float | None) -> str:
    """+12% / -3% (a true minus sign) against the weeks before, or why there is nothing to
    compare with."""
    if value is None:
        return "no calls before to compare"
    shown = round(value * 100)
    sign = "+" if shown > 0 else "\u2212" if shown < 0 else "\u00b1"
    return f"{sign}{abs(shown)}%"


def trend(value: float | None) -> str:
    """A class for a change: up, down or flat (within 5%)."""
    if value is None or abs(value) < 0.05:
        return "flat"
    return "up" if value > 0 else "down"


def usd(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.4f}"
    return f"${value:,.2f}"


def ms(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def number(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    return f"{value:,.0f}" if value == int(value) or abs(value) >= 100 else f"{value:,.1f}"


def path(name: str) -> str:
    """A workflow's page, its name quoted whole (a name from the log may hold any text)."""
    return "/workflows/" + quote(name, safe="")


def age(seconds: float | None) -> str:
    """A duration as a person says it: 45 s, 12 min, 3 h, 2 d."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
