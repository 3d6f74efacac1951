"""CallPlan: everything about a workflow that is the same for each of its calls, worked out once.

Building the plan resolves the provider, prepares the static part of the request, finds the git
commit and the log writer, so the request path only renders, sends, validates and enqueues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from smallops.fallbacks import Fallback
from smallops.gitinfo import git_commit
from smallops.labels import class_fields
from smallops.pricing import vendor_of
from smallops.prompts import Prompt
from smallops.providers.base import Provider
from smallops.records import Pricing, PromptVersion, WorkflowFacts
from smallops.resilience.breaker import breaker_store
from smallops.resilience.budget import BudgetLedger
from smallops.resilience.guards import EventLog, Guards
from smallops.resilience.ratelimit import RateLimit
from smallops.resilience.retry import RetryPolicy
from smallops.review.graduation import Graduation
from smallops.review.policy import ReviewPolicy
from smallops.storage.db import ensure_schema, log_database
from smallops.storage.writer import Writer, writer_for

if TYPE_CHECKING:
    from smallops.workflow import Workflow


@dataclass(frozen=True)
class CallPlan:
    """A workflow, ready to call."""

    name: str
    prompt: Prompt
    output: type[BaseModel] | None
    provider: Provider
    prepared: dict[str, Any]
    review: ReviewPolicy
    fallback: Fallback
    retry: RetryPolicy
    version: PromptVersion
    writer: Writer
    facts: WorkflowFacts
    class_fields: dict[str, list[Any]]
    graduation: Graduation | None
    guards: Guards | None = None
    secondary: CallPlan | None = None  # the model to try when this one fails


def build_plan(wf: Workflow[Any]) -> CallPlan:
    """Resolve what a workflow needs to be called; done once, on its first call."""
    settings, model, provider = wf.settings, wf.model, wf.provider
    url, log = log_database(settings.log)

    def engine() -> Any:
        ensure_schema(log)
        return log

    fields = class_fields(wf.output)
    graduation = None
    if wf.review.kind == "until_graduated":
        graduation = Graduation(engine, wf.name, wf.review, wf.version.id, model.model, fields)
    vendor = vendor_of(provider.name, provider.kind)
    pricing = Pricing(vendor=vendor, override=settings.prices.get(str(model)))
    return CallPlan(
        name=wf.name,
        prompt=wf.prompt,
        output=wf.output,
        provider=provider,
        prepared=provider.prepare(model.model, wf.output, wf.params),
        review=wf.review,
        fallback=wf.fallback,
        retry=wf.retry,
        version=wf.version,
        writer=writer_for(settings.log),
        facts=WorkflowFacts(
            workflow=wf.name,
            prompt=wf.version,
            git_commit=git_commit(wf.base_dir),
            provider=provider.name,
            endpoint=provider.endpoint,
            model_requested=model.model,
            allow_unpinned=wf.allow_unpinned,
            review_policy=str(wf.review),
            origin=wf.origin,
            content=wf.content,
            label_fields=tuple(fields),
            fallback=wf.fallback.kind,
            pricing=pricing,
        ),
        class_fields=fields,
        graduation=graduation,
        guards=_guards(wf, engine, url, pricing),
        secondary=wf.secondary.plan() if wf.secondary is not None else None,
    )


def _guards(wf: Workflow[Any], engine: Any, url: str, pricing: Pricing) -> Guards:
    redis_url = wf.settings.redis_url
    rate = None
    if wf.rate_limit or wf.token_limit:
        rate = RateLimit(wf.name, wf.rate_limit, wf.token_limit, redis_url, wf.rate_wait)
    endpoint = wf.provider.endpoint or wf.provider.name
    return Guards(
        workflow=wf.name,
        rate=rate,
        breaker=breaker_store(redis_url) if wf.breaker is not None else None,
        breaker_key=f"{wf.name}|{endpoint}",
        breaker_config=wf.breaker,
        budget=BudgetLedger(engine, wf.name, wf.budget, url) if wf.budget is not None else None,
        events=EventLog(engine, wf.name),
        pricing=pricing,
        model=wf.model.model,
        max_output_tokens=wf.params.max_tokens or 1024,
    )
