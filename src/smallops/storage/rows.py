"""From the request path's record to portable rows: JSON text, epoch seconds, no secrets.

The same rows go to the database or, while it is unreachable, to the spool file, so a replay
inserts exactly what a direct write would have.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json

from smallops.content import attempt_metadata, deep_map, labels, mask_personal_data
from smallops.plan import PromptVersion
from smallops.pricing import price_run
from smallops.providers.base import Usage
from smallops.redact import Redactor
from smallops.review.policy import REVIEWED_ROUTES


def _json(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return to_json(value, fallback=str).decode()


def run_row(record: dict[str, Any], redact: Redactor) -> tuple[Any, ...]:
    """A `runs` row, in schema.RUN_COLUMNS order."""
    static = record["plan"]
    usage: Usage = record["usage"]
    served = record["model_served"]
    requested = static["model_requested"]
    cost, cost_source = price_run(static["pricing"], served or requested, usage)
    started = record["started_at"]
    mode, inputs, messages, output, attempts = _content(record)
    return (
        record["id"],
        static["workflow"],
        static["prompt"].id,
        static["git_commit"],
        static["provider"],
        static["endpoint"],
        requested,
        served,
        served is not None and served != requested,
        static["allow_unpinned"],
        record["system_fingerprint"],
        record["status"],
        record["error_type"],
        redact(_error_message(record)),
        static["review_policy"],
        record["review_route"],
        static["origin"],
        _json(record["guards"]) if record["guards"] else None,
        static["fallback"],
        record["attempt_count"],
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
        cost,
        cost_source,
        record["latency_ms"],
        started,
        started + record["latency_ms"] / 1000,
        redact(_json(inputs)),
        redact(_json(messages)),
        redact(_json(output)),
        redact(_json(attempts)),
        mode,
    )


def _content(record: dict[str, Any]) -> tuple[str, Any, Any, Any, Any]:
    """The workflow's content mode and the inputs, messages, output and attempts it keeps."""
    mode = record["plan"]["content"]
    inputs, messages = record["inputs"], record["messages"]
    output, attempts = record["output"], record["attempts"]
    if mode == "metadata":
        kept = labels(output, record["plan"]["label_fields"])
        return mode, {}, None, kept, attempt_metadata(attempts)
    if mode == "redacted":
        mask = mask_personal_data
        return mode, *(deep_map(v, mask) for v in (inputs, messages, output, attempts))
    return mode, inputs, messages, output, attempts


def _error_message(record: dict[str, Any]) -> str | None:
    message: str | None = record["error_message"]
    if message and record["plan"]["content"] != "full":
        return mask_personal_data(message)
    return message


def prompt_row(version: PromptVersion) -> tuple[Any, ...]:
    """A `prompt_versions` row, in schema.PROMPT_COLUMNS order."""
    return (
        version.id,
        version.workflow,
        version.template,
        _json(version.output_schema),
        version.model,
        _json(version.params),
        time.time(),
    )


def review_row(record: dict[str, Any], redact: Redactor) -> tuple[Any, ...] | None:
    """A `review_items` row (schema.REVIEW_COLUMNS order) when the run needs a human."""
    route = record["review_route"]
    if route not in REVIEWED_ROUTES:
        return None
    output = record["output"] if record["output"] is not None else record["partial"]
    if record["plan"]["content"] == "redacted":
        output = deep_map(output, mask_personal_data)
    return (
        record["id"],
        record["plan"]["workflow"],
        record["plan"]["prompt"].id,
        record["model_served"],
        "fallback" if route == "fallback" else "policy",
        route,
        record["error_type"],
        redact(_json(output)),
        _json(record["classes"]),
        "pending",
        record["started_at"],
        None,
        None,
        None,
        None,
        None,
        None,
    )
