"""The shared records: what one call hands to the log, and the values inside it.

The call lifecycle builds a RunRecord, the log writer stores it, and whatever reads runs later
(reports, alerts, telemetry) reads the same fields. This module imports nothing above it, so
every layer can use these types.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from smallops.error_types import ErrorType
from smallops.kinds import ContentMode, FallbackKind, Origin, ReviewRoute, RunStatus


@dataclass(frozen=True)
class Price:
    """USD per million tokens, from smallops.toml."""

    input: float
    output: float
    cached_input: float | None = None


@dataclass(frozen=True)
class Pricing:
    """How the writer prices a run: a price from smallops.toml, or genai-prices for a vendor."""

    vendor: str | None  # genai-prices provider id, or None when it cannot know the endpoint
    override: Price | None


@dataclass
class Usage:
    """Token counts of one response; input includes cached tokens."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens


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
class WorkflowFacts:
    """What every run of one workflow records the same way, worked out once per workflow."""

    workflow: str
    prompt: PromptVersion
    git_commit: str | None
    provider: str
    endpoint: str | None
    model_requested: str
    allow_unpinned: bool
    review_policy: str
    origin: Origin
    content: ContentMode
    label_fields: tuple[str, ...]
    fallback: FallbackKind
    pricing: Pricing


@dataclass(frozen=True)
class RunRecord:
    """One call, as the lifecycle hands it to the log writer (before any redaction)."""

    id: str
    facts: WorkflowFacts
    status: RunStatus
    error_type: ErrorType | None
    error_message: str | None
    model_served: str | None
    system_fingerprint: str | None
    attempt_count: int
    usage: Usage
    latency_ms: float
    started_at: float  # epoch seconds
    inputs: dict[str, Any]
    messages: list[dict[str, str]] | None
    output: Any
    attempts: list[dict[str, Any]]
    review_route: ReviewRoute | None
    guards: list[dict[str, Any]]
    classes: list[str]
    partial: Any  # what a failed call left, for the human who takes over
    flags: frozenset[str] = field(default_factory=frozenset)  # storable.FLAGS
    batch: tuple[str, str] | None = None  # (batch id, "<line>:<input hash>") of `run --input`
    trace_parent: str | None = None  # the application's span at the call's start (trace_context)
    caller: str | None = None  # the gateway key's name, for a request that came through it


@dataclass
class Caller:
    """Whom a workflow call is made for when it comes through the gateway: the key's name
    goes on each of its runs (runs.caller), and the runs it made are kept here so the gateway
    can answer with their usage and charge their cost to the key's budget."""

    name: str
    runs: list[RunRecord] = field(default_factory=list)


#: The Caller of the calls made in this context (set by the gateway around a workflow's call).
current_caller: ContextVar[Caller | None] = ContextVar("smallops_caller", default=None)
