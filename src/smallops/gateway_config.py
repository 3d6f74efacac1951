"""The [gateway] table of smallops.toml: the public model names the gateway serves.

    [providers.azure]                        # any OpenAI-compatible endpoint
    kind = "openai"
    base_url = "https://acme.openai.azure.com/openai/v1"

    [gateway.routes."gpt-fast"]              # what clients put in `model`
    model = "openai:gpt-4o-mini-2024-07-18"  # pinned: a moving alias is refused, as in workflows
    fallback = "azure:gpt-4o-mini-2024-07-18"  # tried when the model gives no answer
    content = "redacted"                     # what the log keeps: full, redacted, metadata
    rate_limit = "600/minute"                # for the whole route, every key together
    daily_usd = 20.0                         # the route's budget (monthly_usd too)
    timeout = 60                             # seconds per upstream request
    retries = 2                              # retries of a failed upstream request

    [gateway.routes."triage"]                # a route backed by a workflow
    workflow = "email-triage"                # defined in workflows/*.py; it pins the rest

A model route forwards to a provider of the OpenAI wire format (`openai`, or a
[providers.NAME] with kind "openai") as the request came, or to one of Anthropic's Messages API
(`anthropic`, or a [providers.NAME] with kind "anthropic"), as model or as fallback, translated
both ways
(gateway/anthropic_wire.py). The translation covers plain chat only:

- translated: system and developer messages (into `system`, joined by blank lines), user and
  assistant messages whose content is a string or a list of text parts, `max_tokens` or
  `max_completion_tokens` (4096 when neither is set: Anthropic requires one), `temperature`,
  `top_p`, `stop` (into `stop_sequences`), `user` (into `metadata.user_id`), `stream` with
  `stream_options.include_usage`; the answer becomes a `chat.completion` (or its chunks), with
  end_turn and stop_sequence as finish_reason "stop", max_tokens as "length", refusal as
  "content_filter", and cache reads in `usage.prompt_tokens_details.cached_tokens`. Values
  go as they came: Anthropic's own 400 answers one it refuses (a temperature above 1, say).
- ignored, as they change nothing of the answer: a message's `name`, `n` = 1, `logprobs` =
  false, `seed`, `store`, `metadata`, `service_tier`, `parallel_tool_calls`,
  `response_format` {"type": "text"}, penalties of 0, and any field set to null.
- refused with a 400 naming the field, before anything is sent: tools, tool_choice, functions,
  function_call, tool and function messages or an assistant's tool_calls, response_format
  json_object or json_schema, image, audio or file parts, `n` above 1, `logprobs`,
  `top_logprobs`, `logit_bias`, non-zero penalties, `audio`, `modalities`, `prediction`,
  `reasoning_effort`, `web_search_options`, and any other field. A route with an Anthropic
  model as its fallback only is held to the same rule, so that a request is not refused
  only when the fallback happens to answer it.

Keys are per client and live in the database (`smallops gateway keys create`), never here.

A workflow route has `workflow` and nothing else: model, fallback, prompt, schema, review,
content, rate limit and budget are the workflow's own, as in `Workflow.run`, and its provider
may be of any kind (Anthropic's too: the workflow calls it through its SDK). The name is checked
against workflows/*.py when the gateway starts and by `smallops check` (this file is read before
workflows load); the request is answered by gateway/workflow_route.py:

- the input: the last user message's text. A JSON object there is the prompt's inputs, every
  variable and nothing else (as `smallops run --json` takes them); other text is the input of
  a prompt with one variable. A missing or unknown input is a 400 naming it.
- the rest of the request: the client's other messages, `temperature`, `max_tokens`,
  `response_format` and such are ignored (the workflow pins them); `n` above 1, `tools`,
  `functions` and `logprobs` are refused with a 400, since the answer cannot honour them.
- the answer: a chat.completion whose content is the output as JSON (a free-text workflow's
  text as is), with the usage of every model call the request made and `x-smallops-status`
  (the run's status). 200 when there is an output: `auto`, `pending_review` (a reviewer may
  still correct it), `fallback_default`; 202 when a human has the work (`queued_for_human`):
  content null and `message.refusal` saying so. A failure under fallback "raise" is an error
  in OpenAI's shape (502, or 429/503/504 by its cause), not to be retried.
- streamed: one chunk with the whole answer (and the usage chunk if asked), then [DONE].
- the log: the workflow's own runs only, with the key's name in `runs.caller`. The key's rate
  limit and budget apply on top of the workflow's own guards.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from smallops.errors import ConfigError
from smallops.kinds import CONTENT_MODES, ContentMode
from smallops.pinning import ModelRef, check_pinned, parse_model

WHERE = "smallops.toml"
GATEWAY_KEYS = ("routes",)
ROUTE_KEYS = (
    "model",
    "workflow",
    "fallback",
    "content",
    "rate_limit",
    "daily_usd",
    "monthly_usd",
    "timeout",
    "retries",
    "allow_unpinned",
)
BUILTIN_KINDS = {"openai": "openai", "anthropic": "anthropic", "fake": "fake"}
#: The wire formats a route may forward to.
FORWARDED_KINDS = ("openai", "anthropic")
MAX_ROUTE_NAME = 80  # runs.workflow holds "gateway:" and the name


@dataclass(frozen=True)
class Route:
    """One public model name and where its requests go."""

    name: str
    model: ModelRef
    fallback: ModelRef | None = None
    content: ContentMode = "full"
    rate_limit: tuple[str, ...] = ()  # limits' notation, e.g. ("600/minute",)
    daily_usd: float | None = None
    monthly_usd: float | None = None
    timeout: float = 60.0
    retries: int = 2
    allow_unpinned: bool = False

    @property
    def workflow(self) -> str:
        """The name its runs are logged under: `smallops logs --workflow gateway:NAME`."""
        return f"gateway:{self.name}"


@dataclass(frozen=True)
class WorkflowRoute:
    """A public model name answered by a workflow of the project."""

    name: str
    workflow: str  # the workflow's name: its runs are logged under it
    rate_limit: tuple[str, ...] = ()  # none of the route's own: the workflow's guards apply
    daily_usd: float | None = None
    monthly_usd: float | None = None


@dataclass(frozen=True)
class GatewaySettings:
    """The [gateway] table."""

    routes: dict[str, Route | WorkflowRoute] = field(default_factory=dict)


def parse_gateway(table: Mapping[str, Any], provider_kinds: Mapping[str, str]) -> GatewaySettings:
    """The [gateway] table, checked: `provider_kinds` maps each configured provider's name to
    its wire format (the built-in ones are added here)."""
    _check_keys(table, GATEWAY_KEYS, "[gateway]")
    routes_table = table.get("routes", {})
    if not isinstance(routes_table, dict):
        raise ConfigError(f"[gateway] routes in {WHERE} must be a table of routes")
    kinds = {**BUILTIN_KINDS, **provider_kinds}
    routes: dict[str, Route | WorkflowRoute] = {}
    for name, spec in routes_table.items():
        routes[name] = _route(name, spec, kinds)
    return GatewaySettings(routes=routes)


def _route(name: str, spec: Any, kinds: Mapping[str, str]) -> Route | WorkflowRoute:
    where = f'[gateway.routes."{name}"]'
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} in {WHERE} must be a table", hint=_EXAMPLE)
    if not name.strip() or len(name) > MAX_ROUTE_NAME or any(c.isspace() for c in name):
        raise ConfigError(
            f"{where} in {WHERE}: a route name is 1 to {MAX_ROUTE_NAME} characters, no spaces",
            hint='clients send it as `model`, e.g. [gateway.routes."gpt-fast"]',
        )
    _check_keys(spec, ROUTE_KEYS, where)
    if "workflow" in spec:
        return _workflow_route(name, spec, where)
    allow_unpinned = spec.get("allow_unpinned", False)
    if not isinstance(allow_unpinned, bool):
        raise ConfigError(f"{where} allow_unpinned in {WHERE} must be true or false")
    if "model" not in spec:
        raise ConfigError(f"{where} in {WHERE} has no model or workflow", hint=_EXAMPLE)
    model = _model(spec["model"], f"{where} model", kinds, allow_unpinned)
    fallback = None
    if spec.get("fallback") is not None:
        fallback = _model(spec["fallback"], f"{where} fallback", kinds, allow_unpinned)
    content = spec.get("content", "full")
    if content not in CONTENT_MODES:
        raise ConfigError(
            f"{where} content in {WHERE} is {content!r}",
            hint=f"content is one of: {', '.join(CONTENT_MODES)}",
        )
    return Route(
        name=name,
        model=model,
        fallback=fallback,
        content=cast(ContentMode, content),
        rate_limit=_rate_limit(spec.get("rate_limit"), where),
        daily_usd=_usd(spec.get("daily_usd"), f"{where} daily_usd"),
        monthly_usd=_usd(spec.get("monthly_usd"), f"{where} monthly_usd"),
        timeout=_positive(spec.get("timeout", 60.0), f"{where} timeout", 3600),
        retries=_retries(spec.get("retries", 2), where),
        allow_unpinned=allow_unpinned,
    )


_EXAMPLE = 'e.g. model = "openai:gpt-4o-mini-2024-07-18", or workflow = "email-triage"'


def _workflow_route(name: str, spec: Mapping[str, Any], where: str) -> WorkflowRoute:
    workflow = spec["workflow"]
    if not isinstance(workflow, str) or not workflow.strip():
        raise ConfigError(
            f"{where} workflow in {WHERE} must be a workflow's name", hint=_WORKFLOW_EXAMPLE
        )
    others = [key for key in spec if key != "workflow"]
    if "model" in others:
        raise ConfigError(
            f"{where} in {WHERE} has both model and workflow: give exactly one",
            hint="a workflow route uses the workflow's own pinned model",
        )
    if others:
        raise ConfigError(
            f"{where} in {WHERE}: {others[0]} does not go with workflow",
            hint="the workflow sets its fallback, content, rate_limit, budget, timeout and "
            "retries itself, in workflows/*.py",
        )
    return WorkflowRoute(name=name, workflow=workflow)


_WORKFLOW_EXAMPLE = 'e.g. workflow = "email-triage", a workflow defined in workflows/*.py'


def check_workflows(settings: GatewaySettings, known: Collection[str]) -> None:
    """Each workflow route names a workflow the project defines (`known`: their names), checked
    when the gateway starts; `email_triage` finds `email-triage`, as on the command line."""
    for route in settings.routes.values():
        if isinstance(route, WorkflowRoute) and resolve_workflow(route.workflow, known) is None:
            close = difflib.get_close_matches(route.workflow, sorted(known), n=1)
            every = f"workflows: {', '.join(sorted(known)) or 'none defined in workflows/*.py'}"
            raise ConfigError(
                f'[gateway.routes."{route.name}"] in {WHERE} names an unknown workflow '
                f"{route.workflow!r}",
                hint=f"did you mean {close[0]}? ({every})" if close else every,
            )


def resolve_workflow(name: str, known: Collection[str]) -> str | None:
    """The name in `known` that `name` means ('-' and '_' alike), or None."""
    wanted = name.replace("_", "-")
    return next((k for k in known if k.replace("_", "-") == wanted), None)


def _model(value: Any, where: str, kinds: Mapping[str, str], allow_unpinned: bool) -> ModelRef:
    if not isinstance(value, str):
        raise ConfigError(f"{where} in {WHERE} must be a string", hint=_EXAMPLE)
    try:
        ref = parse_model(value)
    except ConfigError as exc:
        raise ConfigError(f"{where} in {WHERE}: {exc.message}", hint=exc.hint) from None
    kind = kinds.get(ref.provider)
    if kind is None:
        raise ConfigError(
            f"{where} in {WHERE} names an unknown provider {ref.provider!r}",
            hint=f"use one of {', '.join(sorted(kinds))}, or add [providers.{ref.provider}]",
        )
    if kind not in FORWARDED_KINDS:
        raise ConfigError(
            f"{where} in {WHERE}: provider {ref.provider!r} is of kind {kind!r}; the gateway "
            "forwards only to the OpenAI wire format and to Anthropic's Messages API",
            hint='use a provider of kind "openai" (OpenAI, Azure, vLLM, Ollama, OpenRouter...) '
            'or "anthropic"',
        )
    if not allow_unpinned:
        try:
            check_pinned(ref, kind)
        except ConfigError as exc:
            hint = (exc.hint or "").replace(
                "pass allow_unpinned=True", "set allow_unpinned = true on the route"
            )
            raise type(exc)(f"{where} in {WHERE}: {exc.message}", hint=hint) from None
    return ref


def _rate_limit(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    texts = [value] if isinstance(value, str) else value
    hint = 'write it like "600/minute" or ["10/second", "1000/hour"]'
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ConfigError(f"{where} rate_limit in {WHERE} must be a rate", hint=hint)
    from limits import parse_many

    try:
        for text in texts:
            parse_many(text)
    except ValueError:
        raise ConfigError(
            f"{where} rate_limit {value!r} in {WHERE} is not a rate", hint=hint
        ) from None
    return tuple(texts)


def _usd(value: Any, where: str) -> float | None:
    if value is None:
        return None
    return _positive(value, where, math.inf)


def _positive(value: Any, where: str, most: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= most
    ):
        raise ConfigError(f"{where} in {WHERE} must be a number above 0", hint="e.g. 20.0")
    return float(value)


def _retries(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
        raise ConfigError(f"{where} retries in {WHERE} must be a whole number from 0 to 10")
    return value


def _check_keys(table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            every = f"known keys: {', '.join(known)}"
            raise ConfigError(
                f"{where} in {WHERE} has an unknown key {key!r}",
                hint=f"did you mean {close[0]}? ({every})" if close else every,
            )
