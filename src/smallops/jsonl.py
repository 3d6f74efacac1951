"""JSON Lines: one object per line, every problem named by file and line.

Lines end at "\n" (or "\r\n") only: U+2028 and U+2029 are valid inside a JSON string, and
str.splitlines() would cut the line there. Values may nest at most MAX_DEPTH levels, far below
where parsing, serialising or storing them would fail, and integers may have as many digits as
Python converts (sys.get_int_max_str_digits(), 4300 by default).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smallops.errors import InputError

MAX_DEPTH = 100


def parse(text: str | bytes, where: str) -> Any:
    """One JSON value; InputError naming `where` when it is not valid JSON or nests too deep."""
    try:
        value = json.loads(text, parse_int=_integer)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: not valid JSON (not UTF-8 text)") from None
    except _TooLong as exc:
        raise InputError(
            f"{where}: a number has {exc.digits} digits, more than the {exc.limit} allowed",
            hint="send very long numbers as strings",
        ) from None
    except ValueError as exc:
        raise InputError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise _too_deep(where) from None
    check_depth(value, where)
    return value


class _TooLong(ValueError):
    def __init__(self, digits: int, limit: int) -> None:
        super().__init__(f"{digits} digits")
        self.digits, self.limit = digits, limit


def _integer(text: str) -> int:
    """An integer of the JSON text, or _TooLong where int() would refuse it (its ValueError
    names no place and suggests a Python call)."""
    limit: int = getattr(sys, "get_int_max_str_digits", lambda: 0)()  # none before 3.10.7
    digits = len(text.lstrip("-"))
    if limit and digits > limit:
        raise _TooLong(digits, limit)
    return int(text)


def check_depth(value: Any, where: str) -> None:
    """InputError naming `where` when lists and objects nest more than MAX_DEPTH levels."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > MAX_DEPTH:
                raise _too_deep(where)
            stack.extend((child, depth + 1) for child in item)


def _too_deep(where: str) -> InputError:
    return InputError(
        f"{where}: lists and objects nest more than {MAX_DEPTH} levels deep",
        hint=f"flatten the data to at most {MAX_DEPTH} levels",
    )


def parse_object(text: str, where: str, expected: str = "a JSON object") -> dict[str, Any]:
    """One JSON object; InputError naming `where` when it is not valid JSON or not an object."""
    value = parse(text, where)
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected {expected}, got {type(value).__name__}")
    return value


def objects(
    text: str, source: str, expected: str = "a JSON object"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of `text`, read from `source`."""
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield (
                number,
                parse_object(line.removesuffix("\r"), f"{source}, line {number}", expected),
            )


def replace_file(path: Path, value: Any) -> bool:
    """Write `value` as JSON to `path` whole (a reader never sees it half written), making its
    folder if need be; False when the disk refused."""
    partial = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        partial.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
        return False
    return True
