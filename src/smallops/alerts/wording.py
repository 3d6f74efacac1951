"""How alerts word what they found: links to the dashboards and money, the same in every rule."""

from __future__ import annotations

from urllib.parse import quote


def link(workflow: str) -> str:
    """The workflow's dashboard page, as a path (the engine makes it absolute)."""
    return "/workflows/" + quote(workflow, safe="")


def money(value: float) -> str:
    return f"${value:,.2f}"
