"""Queue triage: which items a queue view shows (`?state=`), in what order (`?sort=`), and the
short previews and ages that let a reviewer pick one without opening it.

The queue page is bounded (200 items), so sorting by an output field happens here, over the
page's rows, rather than in SQL: the same code on SQLite and Postgres, and enum/Literal fields
sort in their declared order, which JSON extraction in SQL cannot know.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, get_args, get_origin

from smallops.errors import InputError
from smallops.kinds import REVIEW_STATES

DECIDED: tuple[str, ...] = tuple(s for s in REVIEW_STATES if s != "pending")
# `?state=` value -> the item states it shows (None: every state).
STATE_FILTERS: dict[str, tuple[str, ...] | None] = {
    "pending": ("pending",),
    "decided": DECIDED,
    "all": None,
    **{state: (state,) for state in DECIDED},
}
AGE_SORTS = ("oldest", "newest")
PREVIEW_CHARS = 80
OUTPUT_FIELDS = 3


def states_for(value: str | None) -> tuple[str, ...] | None:
    """The item states a `?state=` value stands for; a clear error for one it does not know."""
    name = value or "pending"
    if name not in STATE_FILTERS:
        raise InputError(
            f"unknown state {name!r}: use one of {', '.join(STATE_FILTERS)}",
            hint="for example /?state=decided",
        )
    return STATE_FILTERS[name]


def truncate(text: str, limit: int = PREVIEW_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def input_preview(inputs: Any) -> str:
    """The subject if the input has one, else its first string; '' when the log kept no
    content (redacted or metadata-only runs)."""
    if isinstance(inputs, str):
        return truncate(inputs)
    if not isinstance(inputs, Mapping):
        return ""
    for key in ("subject", "title"):
        if isinstance(inputs.get(key), str) and inputs[key].strip():
            return truncate(inputs[key])
    for value in inputs.values():
        if isinstance(value, str) and value.strip():
            return truncate(value)
    return ""


def output_preview(output: Any, fields: Sequence[str] = ()) -> str:
    """The first few short fields of an output ("category: billing · urgency: high"), in the
    model's field order when given (Postgres's JSONB keeps no key order), or the start of a
    free-text one."""
    if isinstance(output, str):
        return truncate(output)
    if not isinstance(output, Mapping):
        return ""
    keys = [key for key in fields if key in output] + [key for key in output if key not in fields]
    short = [
        f"{key}: {output[key]}"
        for key in keys
        if isinstance(output[key], (str, int, float, bool)) and len(str(output[key])) <= 24
    ]
    return truncate(" · ".join(short[:OUTPUT_FIELDS]))


def age_text(seconds: float) -> str:
    """A rough age, as a reviewer reads it: "40 s", "12 min", "3 h", "2 d"."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def annotate(item: dict[str, Any], now: datetime, model: Any = None) -> dict[str, Any]:
    """Add `input_preview`, `output_preview` (the final output once decided; fields in the order
    of `model`, the workflow's output model), `age_s` and `age` to a queue item."""
    fields = list(getattr(model, "model_fields", {}))
    final = item.get("final_output")
    item["input_preview"] = input_preview(item.get("inputs"))
    item["output_preview"] = output_preview(
        final if final is not None else item.get("output"), fields
    )
    item["age_s"] = int((now - item["created_at"]).total_seconds())
    item["age"] = age_text(item["age_s"])
    return item


def declared_order(model: Any, field: str) -> list[Any] | None:
    """The values of an enum/Literal field of a pydantic model in their declared order."""
    info = getattr(model, "model_fields", {}).get(field)
    annotation = getattr(info, "annotation", None)
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    return None


def sort_items(
    items: list[dict[str, Any]], sort: str | None, model_of: Callable[[str], Any]
) -> list[dict[str, Any]]:
    """Items in the order `?sort=` asks: "oldest"/"newest" by creation, or by an output field
    ("urgency", "-urgency" reversed): enum/Literal values in their declared order, others
    alphabetically, oldest first among equals, items without the field last."""
    if not sort:
        return items
    if sort in AGE_SORTS:
        return sorted(items, key=lambda i: i["created_at"], reverse=sort == "newest")
    field, reverse = sort.removeprefix("-"), sort.startswith("-")

    def value_of(item: dict[str, Any]) -> Any:
        output = item.get("final_output") or item.get("output")
        return output.get(field) if isinstance(output, Mapping) else None

    def key(item: dict[str, Any]) -> tuple[int, str]:
        value, order = value_of(item), declared_order(model_of(item["workflow"]), field)
        if order is not None and value in order:
            return (order.index(value), "")
        return (len(order or ()), str(value))

    oldest = sorted(items, key=lambda i: i["created_at"])
    present = [i for i in oldest if value_of(i) is not None]
    missing = [i for i in oldest if value_of(i) is None]
    return sorted(present, key=key, reverse=reverse) + missing  # stable: oldest first in ties
