"""Making any value storable on both engines, and saying what had to change.

Postgres refuses a NUL character in text and in JSON (`\\u0000`), JSON numbers that are not
finite (NaN, Infinity) and lone UTF-16 surrogates; an overlong value breaks a VARCHAR limit.
SQLite takes most of these, but the same record must mean the same thing in either database
and replay from the spool into either. So, before any row is written:

- NUL becomes U+FFFD (the replacement character): flag `nul_replaced`;
- a lone surrogate becomes U+FFFD: flag `surrogate_replaced`;
- NaN, Infinity and -Infinity become the strings "NaN", "Infinity", "-Infinity":
  flag `non_finite_as_text`;
- a value from outside (a served model name, a fingerprint) longer than its column is cut to
  fit: flag `truncated_field`.

The flags are recorded on the run (`runs.flags`) so a reader knows the text is not verbatim.
Clean values (nearly all) pay for a few substring searches, not a walk of the value.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_json

Flag = Literal["nul_replaced", "surrogate_replaced", "non_finite_as_text", "truncated_field"]
FLAGS: tuple[Flag, ...] = get_args(Flag)
REPLACEMENT = "\ufffd"
_SUSPECT_JSON = ("\\u0000", "NaN", "Infinity")  # cheap signs that the slow path is needed


def json_text(value: Any, flags: set[Flag]) -> str | None:
    """`value` as JSON text that both engines store, adding to `flags` what had to change."""
    if value is None:
        return None
    try:
        if isinstance(value, BaseModel):
            data = value.model_dump_json()
        else:
            data = to_json(value, fallback=str).decode()
    except (PydanticSerializationError, UnicodeError, ValueError):
        data = None  # a lone surrogate somewhere: the slow path replaces it
    if data is not None and not any(sign in data for sign in _SUSPECT_JSON):
        return data
    cleaned = clean(value, flags)
    return to_json(cleaned, fallback=lambda other: text(str(other), flags)).decode()


def text(value: str | None, flags: set[Flag], limit: int | None = None) -> str | None:
    """A text value without NUL or lone surrogates, cut to `limit` characters if given."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
        flags.add("nul_replaced")
    value = encodable(value, flags)
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "…"
        flags.add("truncated_field")
    return value


def encodable(value: str, flags: set[Flag]) -> str:
    """`value` as text that encodes to UTF-8: a lone surrogate becomes U+FFFD."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        flags.add("surrogate_replaced")
        return _without_lone_surrogates(value)
    return value


def clean(value: Any, flags: set[Flag]) -> Any:
    """A copy of `value` (models as their JSON form) with every string and number storable."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python")
    if isinstance(value, str):
        return text(value, flags)
    if isinstance(value, float) and not math.isfinite(value):
        flags.add("non_finite_as_text")
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {text(str(k), flags): clean(v, flags) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [clean(item, flags) for item in value]
    return value


def _without_lone_surrogates(value: str) -> str:
    """Pairs of surrogates become the character they encode; a lone one becomes U+FFFD."""
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
