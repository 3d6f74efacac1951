"""From the request path's record to portable rows: JSON text, epoch seconds, no secrets.

The same rows go to the database or, while it is unreachable, to the spool file, so a replay
inserts exactly what a direct write would have. What every run of a prompt version repeats
travels beside the runs as prompt part rows (prompt_parts.py), written in the same transaction.
Every text is made storable on both engines (storable.py) and every field passes the redactor,
so a key a provider echoes back (in an error, a fingerprint, a header-derived field) is removed
wherever it lands.
"""

from __future__ import annotations

import time
from typing import Any

from smallops.content import attempt_metadata, deep_map, mask_personal_data
from smallops.kinds import REVIEWED_ROUTES
from smallops.labels import labels
from smallops.pricing import price_run
from smallops.records import PromptVersion, RunRecord
from smallops.redact import Redactor
from smallops.storage.prompt_parts import FORMAT, MIN_PART, Keep, compact, part_id
from smallops.storage.schema import runs
from smallops.storage.storable import Flag, json_text, text

Row = tuple[Any, ...]
#: The prompt part rows (schema.PART_COLUMNS order) of a batch, by id: each kept once.
Parts = dict[str, Row]


def _length(column: Any) -> int:
    length: int = column.type.length
    return length


_SERVED_LIMIT = _length(runs.c.model_served)
_FINGERPRINT_LIMIT = _length(runs.c.system_fingerprint)


def encode(record: RunRecord, redact: Redactor, parts: Parts) -> tuple[Row, Row | None]:
    """A run's row and, when it needs a human, its review item's row: made together, so a run
    is never written without its item. The prompt parts the run refers to are added to
    `parts`, which the batch's runs share."""
    flags: set[Flag] = set(record.flags)  # type: ignore[arg-type]
    review = review_row(record, redact, flags)
    return run_row(record, redact, flags, parts), review


def run_row(
    record: RunRecord,
    redact: Redactor,
    flags: set[Flag] | None = None,
    parts: Parts | None = None,
) -> Row:
    """A `runs` row, in schema.RUN_COLUMNS order; with `parts`, what the run repeats of its
    prompt version is referenced and added there (without, the row holds it all inline)."""
    flags = set(record.flags) if flags is None else flags  # type: ignore[arg-type]
    facts, usage = record.facts, record.usage
    served = text(record.model_served, flags, _SERVED_LIMIT)
    requested = facts.model_requested
    cost, cost_source = price_run(facts.pricing, served or requested, usage)
    started = record.started_at
    mode, inputs, messages, output, attempts = _content(record)
    compacted = None
    if parts is not None and mode != "metadata":
        keep, used = _keeper(record, redact, flags, parts)
        messages, attempts = compact(messages, attempts, keep)
        compacted = FORMAT if used else None
    batch = record.batch or (None, None)
    columns = (
        record.id,
        facts.workflow,
        facts.prompt.id,
        facts.git_commit,
        facts.provider,
        facts.endpoint,
        requested,
        redact(served),
        served is not None and served != requested,
        facts.allow_unpinned,
        redact(text(record.system_fingerprint, flags, _FINGERPRINT_LIMIT)),
        record.status,
        record.error_type,
        redact(text(_error_message(record), flags)),
        facts.review_policy,
        record.review_route,
        facts.origin,
        json_text(record.guards, flags) if record.guards else None,
        facts.fallback,
        record.attempt_count,
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
        cost,
        cost_source,
        record.latency_ms,
        started,
        started + record.latency_ms / 1000,
        redact(json_text(inputs, flags)),
        redact(json_text(messages, flags)),
        redact(json_text(output, flags)),
        redact(json_text(attempts, flags)),
        mode,
    )
    stored_flags = json_text(sorted(flags), set()) if flags else None
    return (*columns, stored_flags, *batch, compacted, record.trace_parent, record.caller)


def _keeper(
    record: RunRecord, redact: Redactor, flags: set[Flag], parts: Parts
) -> tuple[Keep, list[str]]:
    """A `Keep` for one run: each part's text made storable and without secrets exactly as the
    run's own text is, hashed, and added to `parts`; and the list of ids it handed out."""
    workflow, version = record.facts.workflow, record.facts.prompt.id
    used: list[str] = []

    def keep(value: Any, always: bool) -> str | None:
        stored = redact(json_text(value, flags)) or "null"
        if not always and len(stored) < MIN_PART:
            return None
        found = part_id(workflow, version, stored)
        if found not in parts:
            parts[found] = (found, workflow, version, stored, time.time())
        used.append(found)
        return found

    return keep, used


def _content(record: RunRecord) -> tuple[str, Any, Any, Any, Any]:
    """The workflow's content mode and the inputs, messages, output and attempts it keeps."""
    mode = record.facts.content
    inputs, messages = record.inputs, record.messages
    output, attempts = record.output, record.attempts
    if mode == "metadata":
        kept = labels(output, record.facts.label_fields)
        return mode, {}, None, kept, attempt_metadata(attempts)
    if mode == "redacted":
        mask = mask_personal_data
        return mode, *(deep_map(v, mask) for v in (inputs, messages, output, attempts))
    return mode, inputs, messages, output, attempts


def _error_message(record: RunRecord) -> str | None:
    message = record.error_message
    if message and record.facts.content != "full":
        return mask_personal_data(message)
    return message


def prompt_row(version: PromptVersion) -> Row:
    """A `prompt_versions` row, in schema.PROMPT_COLUMNS order."""
    flags: set[Flag] = set()
    return (
        version.id,
        version.workflow,
        text(version.template, flags),
        json_text(version.output_schema, flags),
        version.model,
        json_text(version.params, flags),
        time.time(),
    )


def review_row(record: RunRecord, redact: Redactor, flags: set[Flag] | None = None) -> Row | None:
    """A `review_items` row (schema.REVIEW_COLUMNS order) when the run needs a human."""
    route = record.review_route
    if route is None or route not in REVIEWED_ROUTES:
        return None
    flags = set() if flags is None else flags
    output = record.output if record.output is not None else record.partial
    if record.facts.content == "redacted":
        output = deep_map(output, mask_personal_data)
    return (
        record.id,
        record.facts.workflow,
        record.facts.prompt.id,
        redact(text(record.model_served, flags, _SERVED_LIMIT)),
        "fallback" if route == "fallback" else "policy",
        route,
        record.error_type,
        redact(json_text(output, flags)),
        json_text(record.classes, flags),
        "pending",
        record.started_at,
        None,
        None,
        None,
        None,
        None,
        None,
    )
