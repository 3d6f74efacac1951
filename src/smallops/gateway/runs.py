"""Each gateway request as runs in the log, like a workflow's calls: who asked (the key), the
route, the model asked and served, usage, cost, latency, every attempt, and as much content as
the route's content mode keeps.

A request answered by the route's fallback model is two runs, as a workflow's secondary model
is: the pinned model's (status `fallback_secondary`, with why it failed) and the fallback's
(origin `fallback`).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

from smallops.error_types import ErrorType
from smallops.gateway.guards import Target
from smallops.gateway_config import Route
from smallops.ids import uuid7
from smallops.kinds import Origin, RunStatus
from smallops.pricing import vendor_of
from smallops.providers.base import Provider
from smallops.records import Pricing, PromptVersion, RunRecord, Usage, WorkflowFacts


def facts_for(
    route: Route, provider: Provider, model: str, pricing: Pricing, origin: Origin
) -> WorkflowFacts:
    """What every run of a route's model records the same way."""
    spec = f"{provider.name}:{model}"
    version = PromptVersion(
        id=hashlib.sha256(f"gateway|{route.name}|{spec}".encode()).hexdigest()[:16],
        workflow=route.workflow,
        template=f"gateway route {route.name!r}: the client's messages, sent to {spec} "
        + ("translated to the Messages API" if provider.kind == "anthropic" else "as is"),
        output_schema=None,
        model=spec,
        params={},
    )
    return WorkflowFacts(
        workflow=route.workflow,
        prompt=version,
        git_commit=None,
        provider=provider.name,
        endpoint=provider.endpoint,
        model_requested=model,
        allow_unpinned=route.allow_unpinned,
        review_policy="none",
        origin=origin,
        content=route.content,
        label_fields=(),
        fallback="secondary" if route.fallback is not None else "raise",
        pricing=pricing,
    )


def pricing_for(provider: Provider, spec: str, overrides: dict[str, Any]) -> Pricing:
    return Pricing(vendor=vendor_of(provider.name, provider.kind), override=overrides.get(spec))


@dataclass
class Leg:
    """What one target (the pinned model, or the fallback) did for a request."""

    target: Target
    facts: WorkflowFacts
    run_id: str = field(default_factory=uuid7)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    served: str | None = None
    fingerprint: str | None = None
    output: Any = None
    error_type: ErrorType | None = None
    error_message: str | None = None
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)


def record(
    leg: Leg,
    status: RunStatus,
    request: dict[str, Any],
    caller: str,
    decisions: list[dict[str, Any]],
) -> RunRecord:
    """The leg as a run for the log writer."""
    messages = request.get("messages")
    return RunRecord(
        id=leg.run_id,
        facts=leg.facts,
        status=status,
        error_type=leg.error_type,
        error_message=leg.error_message,
        model_served=leg.served,
        system_fingerprint=leg.fingerprint,
        attempt_count=len(leg.attempts),
        usage=leg.usage,
        latency_ms=round((time.perf_counter() - leg.started) * 1000, 3),
        started_at=leg.started_at,
        inputs={k: v for k, v in request.items() if k != "messages"},
        messages=messages if isinstance(messages, list) else None,
        output=leg.output,
        attempts=leg.attempts,
        review_route="none",
        guards=decisions,
        classes=[],
        partial=None,
        caller=caller,
    )


def usage_of(body: Any) -> Usage | None:
    """The usage of a Chat Completions body or chunk, if it carries one."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    return Usage(
        input_tokens=_count(usage.get("prompt_tokens")),
        output_tokens=_count(usage.get("completion_tokens")),
        cached_tokens=_count(prompt.get("cached_tokens")) if isinstance(prompt, dict) else 0,
        cache_write_tokens=_count(usage.get("cache_creation_input_tokens")),
        reasoning_tokens=(
            _count(completion.get("reasoning_tokens")) if isinstance(completion, dict) else 0
        ),
    )


def _count(value: Any) -> int:
    """A token count, or 0 for what is not one: an upstream's string, list, infinity or
    negative number must neither fail the answer nor lower a budget."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value) if 0 < value < math.inf else 0


def text_of(body: Any) -> str | None:
    """The first choice's message content, for the log."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None
