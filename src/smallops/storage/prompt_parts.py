"""Prompt parts: what every run of a prompt version sends again, stored once and referenced.

A run's rendered system prompt and its request's skeleton (model, schema, parameters) are the
same for every call of a prompt version, and made most of a logged run's bytes. The writer keeps
each such part once in `prompt_parts`, keyed by a hash of its workflow, prompt version and JSON
text, and the run holds a reference in its place; every reader puts the parts back with
`expand_runs`, so what it shows is exactly what was sent.

A run whose `compacted` column is 1 is stored in this format (a run without it holds everything
inline, as every run written before prompt parts did, and is read as it is):

- `messages`: a list of messages and `{"part": id}` references. Every message has a `role` and
  no reference has one; a message without a role is always stored as a part, so the two never
  mix up.
- an attempt's `request` is kept under `request_ref` as `{"part": id, "messages": [...]}`: the
  part is the request with `messages` set to null (so its keys keep their order), and the
  messages are messages, `{"part": id}`, or `{"run": i}` for the run's own i-th message (a
  repair attempt sends the run's messages and two more).

Compaction works on the values as they are stored: after the content mode has masked or dropped
what it must, and each part's text goes through the same cleaning and secret redaction as the
run's, so a part never holds what the run itself could not.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from pydantic_core import from_json, to_json
from sqlalchemy import Connection, select

from smallops.storage.schema import RUN_COLUMNS, prompt_parts

log = logging.getLogger("smallops")

FORMAT = 1  # runs.compacted of a run in the format above
MIN_PART = 200  # characters of JSON: a shorter message stays inline (a reference is ~45)
ID_LENGTH = 32  # hex digits of SHA-256 kept: 128 bits, no collision in any log's lifetime
_CHUNK = 500  # ids per `IN (...)`

#: Stores one part (a value) and returns its id; `always=False` lets it decline a small one
#: (None), to stay inline.
Keep = Callable[[Any, bool], "str | None"]


def part_id(workflow: str, prompt_version: str, text: str) -> str:
    """The id of a part: the same text of the same prompt version is one row, and a workflow
    never shares a row with another (each has its own content mode and retention)."""
    key = f"{workflow}\x00{prompt_version}\x00{text}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(key).hexdigest()[:ID_LENGTH]


def compact(messages: Any, attempts: Any, keep: Keep) -> tuple[Any, Any]:
    """`messages` and `attempts` with the repeated parts replaced by references (`keep` stores
    each part). Every message but the last (the rendered template around the inputs) becomes
    a part unless it is small; every request's skeleton becomes one."""
    run_messages = messages if isinstance(messages, list) else []
    if isinstance(messages, list):
        last = len(messages) - 1
        messages = [_message(m, i < last, keep) for i, m in enumerate(messages)]
    if isinstance(attempts, list):
        attempts = [_attempt(a, run_messages, keep) for a in attempts]
    return messages, attempts


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and "role" in value


def _message(message: Any, repeated: bool, keep: Keep) -> Any:
    if not _is_message(message):
        return {"part": keep(message, True)}
    if repeated:
        ref = keep(message, False)
        if ref is not None:
            return {"part": ref}
    return message


def _attempt(attempt: Any, run_messages: list[Any], keep: Keep) -> Any:
    request = attempt.get("request") if isinstance(attempt, dict) else None
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return attempt
    if "request_ref" in attempt:  # never written by the lifecycle; kept as it is, unread
        return attempt
    ref = {
        "part": keep({**request, "messages": None}, True),
        "messages": [_sent(m, run_messages, keep) for m in request["messages"]],
    }
    return {
        ("request_ref" if k == "request" else k): (ref if k == "request" else v)
        for k, v in attempt.items()
    }


def _sent(message: Any, run_messages: list[Any], keep: Keep) -> Any:
    """One message of a request: a reference to the run's own message when it is one."""
    for i, known in enumerate(run_messages):
        if message is known or message == known:
            return {"run": i}
    if not _is_message(message):
        return {"part": keep(message, True)}
    return message


def referenced(messages: Any, attempts: Any) -> set[str]:
    """The ids of the parts a stored run refers to."""
    ids: set[str] = set()
    for item in messages if isinstance(messages, list) else ():
        if isinstance(item, dict) and "role" not in item and "part" in item:
            ids.add(item["part"])
    for attempt in attempts if isinstance(attempts, list) else ():
        ref = attempt.get("request_ref") if isinstance(attempt, dict) else None
        if isinstance(ref, dict):
            if isinstance(ref.get("part"), str):
                ids.add(ref["part"])
            for item in ref.get("messages") or ():
                if isinstance(item, dict) and "role" not in item and "part" in item:
                    ids.add(item["part"])
    return ids


def expand(messages: Any, attempts: Any, texts: Mapping[str, str]) -> tuple[Any, Any]:
    """What was sent, from a stored run in the format above and its parts' texts by id. A part
    that is not there (it never should be) shows as a message, or a request, saying so."""
    if isinstance(messages, list):
        messages = [m if _is_message(m) else _message_part(m, texts) for m in messages]
    if isinstance(attempts, list):
        sent = messages if isinstance(messages, list) else []
        attempts = [_expanded_attempt(a, sent, texts) for a in attempts]
    return messages, attempts


_MISSING = object()


def _part(ref: Any, texts: Mapping[str, str]) -> tuple[str, Any]:
    """The part a reference names: (its id, its value, or _MISSING if the log lacks it)."""
    part = ref.get("part") if isinstance(ref, dict) else None
    text = texts.get(part) if isinstance(part, str) else None
    if text is None:
        log.warning("smallops: prompt part %s is not in the log", part)
        return str(part), _MISSING
    return str(part), from_json(text)


def _message_part(ref: Any, texts: Mapping[str, str]) -> Any:
    part, value = _part(ref, texts)
    if value is _MISSING:
        return {"role": "(missing)", "content": f"(prompt part {part} is not in the log)"}
    return value


def _expanded_attempt(attempt: Any, sent: list[Any], texts: Mapping[str, str]) -> Any:
    ref = attempt.get("request_ref") if isinstance(attempt, dict) else None
    if not isinstance(ref, dict) or "request" in attempt:
        return attempt
    part, skeleton = _part(ref, texts)
    request = skeleton if isinstance(skeleton, dict) else {"missing_part": part}
    request["messages"] = [_sent_again(m, sent, texts) for m in ref.get("messages") or ()]
    return {
        ("request" if k == "request_ref" else k): (request if k == "request_ref" else v)
        for k, v in attempt.items()
    }


def _sent_again(item: Any, sent: list[Any], texts: Mapping[str, str]) -> Any:
    if _is_message(item):
        return item
    if isinstance(item, dict) and isinstance(item.get("run"), int) and item["run"] < len(sent):
        return from_json(to_json(sent[item["run"]]))  # its own copy, like an inline message
    return _message_part(item, texts)


def load_texts(connection: Connection, ids: Collection[str]) -> dict[str, str]:
    """The JSON text of each of these parts that the log holds, by id."""
    wanted = sorted(ids)
    found: dict[str, str] = {}
    for start in range(0, len(wanted), _CHUNK):
        query = select(prompt_parts.c.id, prompt_parts.c.part).where(
            prompt_parts.c.id.in_(wanted[start : start + _CHUNK])
        )
        found.update((row.id, row.part) for row in connection.execute(query))
    return found


def expand_runs(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Put the parts back into runs read from the log (dicts of their columns, changed in
    place; `attempts` may be left out of the select): the one way every reader gets what was
    sent. The storage detail `compacted` is dropped, so a run reads the same either way."""
    stored = [row for row in rows if row.pop("compacted", None)]
    if not stored:
        return
    ids = set[str]().union(*(referenced(r.get("messages"), r.get("attempts")) for r in stored))
    texts = load_texts(connection, ids)
    for row in stored:
        messages, attempts = expand(row.get("messages"), row.get("attempts"), texts)
        row["messages"] = messages
        if "attempts" in row:
            row["attempts"] = attempts


_MESSAGES = RUN_COLUMNS.index("messages")
_ATTEMPTS = RUN_COLUMNS.index("attempts")
_COMPACTED = RUN_COLUMNS.index("compacted")


def is_compacted(run: Sequence[Any]) -> bool:
    """Whether a `runs` row (RUN_COLUMNS order, JSON as text) refers to prompt parts."""
    return len(run) > _COMPACTED and bool(run[_COMPACTED])


def parts_of(run: Sequence[Any], parts: Iterable[Sequence[Any]]) -> list[Sequence[Any]]:
    """Of `parts` (prompt part rows), those a `runs` row refers to: a part's id is a hash no
    other text contains, so finding it in the run's JSON text is enough."""
    if not is_compacted(run):
        return []
    text = f"{run[_MESSAGES]}{run[_ATTEMPTS]}"
    return [part for part in parts if part[0] in text]


def inline_row(run: Sequence[Any], parts: Iterable[Sequence[Any]]) -> list[Any]:
    """A `runs` row with its parts put back inline (what the quarantine keeps, so that a run set
    aside reads whole without the database)."""
    row = list(run)
    if not is_compacted(row):
        return row
    texts = {part[0]: part[3] for part in parts}
    messages = from_json(row[_MESSAGES]) if row[_MESSAGES] is not None else None
    messages, attempts = expand(messages, from_json(row[_ATTEMPTS]), texts)
    row[_MESSAGES] = None if messages is None else to_json(messages).decode()
    row[_ATTEMPTS] = to_json(attempts).decode()
    row[_COMPACTED] = None
    return row
