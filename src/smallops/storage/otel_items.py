"""A run on its way to the span export: as the log writer hands it over (`Committed`) and as
the spans are built from it (`Item`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json

from smallops.storage.prompt_parts import inline_row, parts_of
from smallops.storage.schema import RUN_COLUMNS
from smallops.trace_context import parse as parse_parent

#: A run ready to export: its row (a dict of columns), its prompt version's parameters, and
#: the caller's (trace id, span id) if the run joined the application's trace.
Item = tuple[dict[str, Any], dict[str, Any] | None, tuple[int, int] | None]

_JSON_COLUMNS = ("messages", "output", "attempts")
_ID, _WORKFLOW, _ATTEMPT_COUNT = (
    RUN_COLUMNS.index(name) for name in ("id", "workflow", "attempt_count")
)


@dataclass(frozen=True)
class Committed:
    """A run as the log writer committed it: its `runs` row (RUN_COLUMNS order), the prompt
    part rows of its batch, its prompt version's parameters, and whether content goes. The
    export thread makes it an `Item`: reading it back is part of the work that thread spreads
    out, so the writer only hands it over."""

    run: Sequence[Any]
    batch_parts: Sequence[Sequence[Any]]
    params: dict[str, Any] | None
    content: bool

    def item(self) -> Item:
        parts = parts_of(self.run, self.batch_parts) if self.content else ()
        return item_of(self.run, parts, self.params, self.content)


def logged_run(run: Sequence[Any]) -> tuple[Any, str, int]:
    """A committed `runs` row as a drop counts it: its id, its workflow and its spans (the
    run's and one per attempt)."""
    return run[_ID], run[_WORKFLOW], 1 + int(run[_ATTEMPT_COUNT] or 0)


def described(item: Item | Committed) -> tuple[str | None, int]:
    """The workflow of a run waiting for export, and the spans it will make."""
    if isinstance(item, Committed):
        _, workflow, count = logged_run(item.run)
        return workflow, count
    row = item[0]
    return row.get("workflow"), 1 + len(row.get("attempts") or ())


def item_of(
    run: Any, parts: Iterable[Any], params: dict[str, Any] | None, content: bool = True
) -> Item:
    """An export item from a `runs` row as the writer commits it (RUN_COLUMNS order, JSON as
    text, prompt parts by reference): the run reads as it will from the log. Without
    `content`, the spans need nothing of the messages or the requests sent, so the row's
    messages and output are left as they are and its prompt parts are not put back."""
    if not content:
        row = dict(zip(RUN_COLUMNS, run, strict=False))
        attempts = row.get("attempts")
        row["attempts"] = from_json(attempts) if isinstance(attempts, str) else attempts
        row["messages"] = row["output"] = None
        return row, params, parse_parent(row.get("trace_parent"))
    row = dict(zip(RUN_COLUMNS, inline_row(run, parts), strict=False))
    for name in _JSON_COLUMNS:
        text = row.get(name)
        row[name] = from_json(text) if isinstance(text, str) else text
    return row, params, parse_parent(row.get("trace_parent"))
