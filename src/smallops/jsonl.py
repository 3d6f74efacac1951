"""JSON Lines: one object per line, every problem named by file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from smallops.errors import InputError


def parse_object(text: str, where: str, expected: str = "a JSON object") -> dict[str, Any]:
    """One JSON object; InputError naming `where` when it is not valid JSON or not an object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected {expected}, got {type(value).__name__}")
    return value


def objects(
    text: str, source: str, expected: str = "a JSON object"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of `text`, read from `source`."""
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, parse_object(line, f"{source}, line {number}", expected)
