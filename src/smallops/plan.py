"""CallPlan: everything about a workflow that is the same for each of its calls, worked out once.

Building the plan resolves the provider, prepares the static part of the request, finds the git
commit and the log writer, so the request path only renders, sends, validates and enqueues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from smallops.config import Price, Settings
from smallops.pinning import ModelRef
from smallops.prompts import Prompt
from smallops.providers.base import Provider
from smallops.resilience.retry import RetryPolicy
from smallops.review.policy import ReviewPolicy

if TYPE_CHECKING:
    from smallops.review.graduation import Graduation
    from smallops.storage.writer import Writer


@dataclass(frozen=True)
class Fallback:
    """Where a failed call's work goes: a human (`review`), a default value, or an exception."""

    kind: str
    value: Any = None


def default(value: Any) -> Fallback:
    """A fallback that answers with `value` (validated against the workflow's output)."""
    return Fallback("default", value)


@dataclass(frozen=True)
class PromptVersion:
    """A prompt version: a hash of what shapes the output, kept with the template text."""

    id: str
    workflow: str
    template: str
    output_schema: dict[str, Any] | None
    model: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Pricing:
    """How the writer prices a run: a price from smallops.toml, or genai-prices for a vendor."""

    vendor: str | None  # genai-prices provider id, or None when it cannot know the endpoint
    override: Price | None


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
    record_static: dict[str, Any]
    class_fields: dict[str, list[Any]]
    graduation: Graduation | None


def build_plan(
    *,
    name: str,
    model: ModelRef,
    prompt: Prompt,
    output: type[BaseModel] | None,
    provider: Provider,
    params: Any,
    review: ReviewPolicy,
    fallback: Fallback,
    retry: RetryPolicy,
    version: PromptVersion,
    allow_unpinned: bool,
    origin: str,
    git_commit: str | None,
    settings: Settings,
) -> CallPlan:
    from smallops.review.graduation import Graduation, class_fields
    from smallops.storage.db import ensure_schema, get_engine, normalise_url
    from smallops.storage.writer import writer_for

    fields = class_fields(output)
    graduation = None
    if review.kind == "until_graduated":
        url = normalise_url(settings.database_url, settings.root)

        def engine() -> Any:
            ready = get_engine(url)
            ensure_schema(ready)
            return ready

        graduation = Graduation(engine, name, review, version.id, model.model, fields)

    # genai-prices knows the vendors' own models; a named endpoint (Ollama, vLLM) is priced only
    # by smallops.toml, and is otherwise recorded as unpriced.
    vendor = provider.kind if provider.name == provider.kind != "fake" else None
    pricing = Pricing(vendor=vendor, override=settings.prices.get(str(model)))
    return CallPlan(
        name=name,
        prompt=prompt,
        output=output,
        provider=provider,
        prepared=provider.prepare(model.model, output, params),
        review=review,
        fallback=fallback,
        retry=retry,
        version=version,
        writer=writer_for(settings),
        record_static={
            "workflow": name,
            "prompt": version,
            "git_commit": git_commit,
            "provider": provider.name,
            "endpoint": provider.endpoint,
            "model_requested": model.model,
            "allow_unpinned": allow_unpinned,
            "review_policy": str(review),
            "origin": origin,
            "fallback": fallback.kind,
            "pricing": pricing,
        },
        class_fields=fields,
        graduation=graduation,
    )
