"""Queue triage: which items a queue view shows (`?state=`), in what order (`?sort=`), and the
short previews and ages that let a reviewer pick one without opening it.

The database sorts and pages the whole queue (storage.review_log.QueueOrder): by age, or by an
enum/Literal output field in its declared order, which this module reads from the output models
and hands down as ranks. Pages follow each other by keyset: a cursor holds the last item's sort
key, so a page deep in a queue of 20,000 costs what the first does.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Literal, get_args, get_origin

from smallops.errors import InputError
from smallops.kinds import REVIEW_STATES
from smallops.storage.review_log import QueueOrder

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
MAX_RANK = 2**31 - 1  # a rank is an index into a field's declared values: far below this
_RUN_ID = re.compile(r"[0-9a-f-]{1,36}")


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


def queue_order(sort: str | None, models: Mapping[str, Any]) -> QueueOrder | None:
    """The order `?sort=` asks for: None (the state's own order), "oldest"/"newest", or an
    enum/Literal output field ("urgency", "-urgency" reversed) of the workflows in `models`
    (workflow -> output model), ranked in each one's declared order. InputError for a sort
    that is none of these."""
    if not sort:
        return None
    if sort in AGE_SORTS:
        return QueueOrder(newest=sort == "newest")
    field = sort.removeprefix("-")
    ranks = {
        name: order
        for name, model in models.items()
        if (order := declared_order(model, field)) is not None
    }
    if not ranks or not field.isidentifier():
        choices = ", ".join([*AGE_SORTS, *sortable_fields(models.values())]) or "oldest, newest"
        raise InputError(
            f"cannot sort the queue by {sort!r}: use one of {choices}",
            hint="an output field sorts when it is an enum or Literal; -name reverses it",
        )
    return QueueOrder(field=field, ranks=ranks, reverse=sort.startswith("-"))


def sortable_fields(models: Iterable[Any]) -> list[str]:
    """The enum/Literal output fields of these models, each once, in their field order."""
    fields: list[str] = []
    for model in models:
        for field in getattr(model, "model_fields", {}):
            if field not in fields and declared_order(model, field) is not None:
                fields.append(field)
    return fields


def cursor_of(sort_key: Sequence[Any]) -> str:
    """A page cursor for the item with this sort key: URL-safe text."""
    values = [{"t": v.isoformat()} if isinstance(v, datetime) else v for v in sort_key]
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def after_cursor(cursor: str | None) -> list[Any] | None:
    """The sort key a cursor holds; InputError for one this server did not make. Only values
    a sort key can hold get through to the query (a rank, a UTC time, a run id): an edited
    cursor cannot hand the database a NUL, a number it cannot bind or a time past year 9999."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or not 2 <= len(values) <= 3:
            raise ValueError
        return [_moment(v["t"]) if isinstance(v, dict) else _plain(v) for v in values]
    except (ValueError, TypeError, KeyError, OverflowError, binascii.Error):
        raise InputError(
            "the page cursor (?after=) is not one this queue made",
            hint="start from the first page: open the queue without ?after=",
        ) from None


def _moment(text: Any) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)  # OverflowError past year 1 or 9999


def _plain(value: Any) -> Any:
    """A rank (a small whole number) or a run id, as cursor_of writes them."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RANK:
        return value
    if isinstance(value, str) and _RUN_ID.fullmatch(value):
        return value
    raise ValueError
