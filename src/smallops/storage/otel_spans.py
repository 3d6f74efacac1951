"""One logged run as OpenTelemetry spans, following the GenAI semantic conventions.

The input is the run as the log holds it (a dict of `runs` columns, JSON decoded, prompt parts
put back), so the writer's live export and `smallops export otel` build the very same spans.
Nothing here imports OpenTelemetry: spans are plain values, turned into SDK spans by
otel_export.py only when export is on.

Ids derive from the run id: the trace id is the run id's 128 bits, each span id a hash of the
run id and the span's place, so exporting a run again sends the same ids (a backfill is
idempotent for any backend that deduplicates by id). Attribute names are written as strings:
the `gen_ai.*` constants of the Python package are deprecated.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from pydantic_core import from_json

from smallops.content import mask_personal_data

Attributes = dict[str, Any]

#: Where each built-in provider's requests go when no base_url is set.
_DEFAULT_HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}
#: gen_ai.provider.name by smallops provider kind (anything else: its own name).
_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic"}


@dataclass(frozen=True, slots=True)
class SpanValue:
    """One span, ready for any exporter: ids as ints, times as epoch nanoseconds."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    kind: str  # "INTERNAL" or "CLIENT"
    start_ns: int
    end_ns: int
    attributes: Attributes
    error: bool = False
    description: str | None = None


def trace_id_of(run_id: str) -> int:
    """The run id's 128 bits (a UUIDv7 is never all zero)."""
    return int(run_id.replace("-", ""), 16) or 1


def span_id_of(run_id: str, place: str) -> int:
    """64 bits of a hash of the run id and the span's place in the run ("run", "attempt-1")."""
    digest = hashlib.sha256(f"{run_id}:{place}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


CONTENT_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def content_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for messages in spans (the GenAI instrumentations' switch)."""
    env = os.environ if environ is None else environ
    return env.get(CONTENT_VARIABLE, "").strip().lower() in ("true", "1", "yes")


def run_spans(
    run: dict[str, Any],
    params: dict[str, Any] | None = None,
    *,
    content: bool = False,
    parent: tuple[int, int] | None = None,
) -> list[SpanValue]:
    """The run's span followed by one CLIENT span per attempt. `params` are the prompt
    version's pinned parameters; `content` asks for messages, never beyond the run's content
    mode; `parent` (trace id, span id) puts the run under the caller's own span."""
    run_id = str(run["id"])
    trace_id, parent_id = parent if parent else (trace_id_of(run_id), None)
    root_id = span_id_of(run_id, "run")
    started, finished = _epoch(run["started_at"]), _epoch(run["finished_at"])
    root = SpanValue(
        name=f"workflow {run['workflow']}",
        trace_id=trace_id,
        span_id=root_id,
        parent_id=parent_id,
        kind="INTERNAL",
        start_ns=_ns(started),
        end_ns=_ns(max(finished, started)),
        attributes=_run_attributes(run),
        error=run.get("error_type") is not None,
        description=run.get("error_type"),
    )
    attempts = run.get("attempts") or []
    messages = _messages(run) if content else None
    spans = [root]
    for index, attempt in enumerate(attempts):
        if not isinstance(attempt, dict):
            continue
        last = index == len(attempts) - 1
        spans.append(
            _attempt_span(run, attempt, index, params or {}, (trace_id, root_id), started, last)
        )
        if messages is not None and last:
            _add_content(spans[-1].attributes, run, messages)
    return spans


def _run_attributes(run: dict[str, Any]) -> Attributes:
    attributes: Attributes = {
        "gen_ai.prompt.name": run["workflow"],
        "gen_ai.prompt.version": run["prompt_version"],
        "gen_ai.request.model": run["model_requested"],
        "gen_ai.usage.input_tokens": int(run["input_tokens"]),
        "gen_ai.usage.output_tokens": int(run["output_tokens"]),
        "smallops.run.id": str(run["id"]),
        "smallops.run.status": run["status"],
        "smallops.run.origin": run.get("origin") or "app",
        "smallops.run.attempts": int(run["attempt_count"]),
    }
    optional = {
        "gen_ai.response.model": run.get("model_served"),
        "gen_ai.usage.cost": run.get("cost_usd"),
        "smallops.review.route": run.get("review_route"),
        "error.type": run.get("error_type"),
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes


def _attempt_span(
    run: dict[str, Any],
    attempt: dict[str, Any],
    index: int,
    params: dict[str, Any],
    parent: tuple[int, int],
    run_started: float,
    last: bool,
) -> SpanValue:
    run_id, model = str(run["id"]), run["model_requested"]
    began = float(attempt.get("started_at") or run_started)
    ended = began + float(attempt.get("latency_ms") or 0) / 1000
    error = attempt.get("error_type")
    if error is None and last and run.get("error_type") in _ANSWER_ERRORS:
        error = run["error_type"]  # the reply came, and was refused, cut off or unusable
    attributes = _attempt_attributes(run, attempt, params, model)
    if error is not None:
        attributes["error.type"] = error
    return SpanValue(
        name=f"chat {model}",
        trace_id=parent[0],
        span_id=span_id_of(run_id, f"attempt-{index + 1}"),
        parent_id=parent[1],
        kind="CLIENT",
        start_ns=_ns(began),
        end_ns=_ns(ended),
        attributes=attributes,
        error=error is not None,
        description=error,
    )


#: Run errors that belong to the last reply rather than to a failed request.
_ANSWER_ERRORS = frozenset({"refused", "truncated", "invalid_json", "schema_mismatch"})


def _attempt_attributes(
    run: dict[str, Any], attempt: dict[str, Any], params: dict[str, Any], model: str
) -> Attributes:
    usage = attempt.get("usage") or {}
    address, port = _server(run.get("provider"), run.get("endpoint"))
    finish = attempt.get("finish")
    values: Attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": _PROVIDER_NAMES.get(run.get("provider") or "", run.get("provider")),
        "gen_ai.request.model": model,
        "gen_ai.request.temperature": params.get("temperature"),
        "gen_ai.request.max_tokens": params.get("max_tokens"),
        "gen_ai.response.model": attempt.get("model"),
        "gen_ai.response.id": _response_id(attempt.get("response")),
        "gen_ai.response.finish_reasons": [finish] if finish else None,
        "server.address": address,
        "server.port": port,
        "http.response.status_code": attempt.get("status_code"),
        "smallops.attempt.purpose": attempt.get("purpose"),
    }
    if usage:
        values.update(
            {
                "gen_ai.usage.input_tokens": int(usage.get("input_tokens") or 0),
                "gen_ai.usage.output_tokens": int(usage.get("output_tokens") or 0),
                "gen_ai.usage.cache_read.input_tokens": int(usage.get("cached_tokens") or 0),
                "gen_ai.usage.reasoning.output_tokens": int(usage.get("reasoning_tokens") or 0),
            }
        )
    return {k: v for k, v in values.items() if v is not None}


def _response_id(response: Any) -> str | None:
    """The id the vendor gave its response, from the raw body the log kept (if it kept it).
    The vendors' bodies begin with it: read there without parsing the body, else parsed."""
    if isinstance(response, str) and response.startswith("{"):
        first = _LEADING_ID.match(response)
        if first is not None:
            return first[1]
        try:
            response = from_json(response)
        except ValueError:
            return None
    found = response.get("id") if isinstance(response, dict) else None
    return found if isinstance(found, str) else None


#: A body whose first member is "id" with a plain string value (no escapes to undo).
_LEADING_ID = re.compile(r'\{\s*"id"\s*:\s*"([^"\\\x00-\x1f]*)"\s*[,}]')


@functools.lru_cache(maxsize=256)  # a process calls a few endpoints: parse each once
def _server(provider: str | None, endpoint: str | None) -> tuple[str | None, int | None]:
    if endpoint:
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return parts.hostname, port
    host = _DEFAULT_HOSTS.get(provider or "")
    return host, 443 if host else None


def _messages(run: dict[str, Any]) -> tuple[list[Any], list[Any]] | None:
    """Input and output messages in the documented shape, as far as the run's content mode
    allows: the log already masked a `redacted` run and kept none of a `metadata` one."""
    mode = run.get("content") or "full"
    if mode not in ("full", "redacted"):
        return None
    sent = run.get("messages")
    inputs = [
        {"role": m.get("role"), "parts": [{"type": "text", "content": str(m.get("content"))}]}
        for m in sent or []
        if isinstance(m, dict)
    ]
    output = run.get("output")
    outputs: list[Any] = []
    if output is not None:
        # keys sorted: Postgres (jsonb) keeps an object's keys in an order of its own, so the
        # log read back and the run in hand agree only on a canonical order
        text = (
            output
            if isinstance(output, str)
            else json.dumps(output, ensure_ascii=False, sort_keys=True)
        )
        if mode == "redacted":
            text = mask_personal_data(text)
        outputs.append(
            {"role": "assistant", "parts": [{"type": "text", "content": text}]},
        )
    return inputs, outputs


def _add_content(attributes: Attributes, run: dict[str, Any], messages: Any) -> None:
    inputs, outputs = messages
    finish = attributes.get("gen_ai.response.finish_reasons")
    for message in outputs:
        message["finish_reason"] = finish[0] if finish else "stop"
    attributes["gen_ai.input.messages"] = json.dumps(inputs, ensure_ascii=False)
    if outputs:
        attributes["gen_ai.output.messages"] = json.dumps(outputs, ensure_ascii=False)


def _epoch(value: Any) -> float:
    """Epoch seconds from a row's time (a float from the writer, a datetime from the log)."""
    if isinstance(value, datetime):
        return _as_utc(value).timestamp()
    return float(value)


def _ns(seconds: float) -> int:
    """Nanoseconds, to the microsecond the log keeps, rounded as the log rounds them (as
    `datetime.fromtimestamp` does: the fraction's microseconds, half to even), so a live span
    and a backfilled one have the same times; without building a datetime."""
    fraction, whole = math.modf(seconds)
    return (int(whole) * 1_000_000 + round(fraction * 1e6)) * 1000


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value  # SQLite: naive
