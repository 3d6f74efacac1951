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

A route forwards to a provider of the OpenAI wire format (`openai`, or a [providers.NAME] with
kind "openai") as the request came, or to one of Anthropic's Messages API (`anthropic`, or a
[providers.NAME] with kind "anthropic"), as model or as fallback, translated both ways
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
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from smallops.errors import ConfigError
from smallops.kinds import CONTENT_MODES, ContentMode
from smallops.pinning import ModelRef, check_pinned, parse_model

WHERE = "smallops.toml"
GATEWAY_KEYS = ("routes",)
ROUTE_KEYS = (
    "model",
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
class GatewaySettings:
    """The [gateway] table."""

    routes: dict[str, Route] = field(default_factory=dict)


def parse_gateway(table: Mapping[str, Any], provider_kinds: Mapping[str, str]) -> GatewaySettings:
    """The [gateway] table, checked: `provider_kinds` maps each configured provider's name to
    its wire format (the built-in ones are added here)."""
    _check_keys(table, GATEWAY_KEYS, "[gateway]")
    routes_table = table.get("routes", {})
    if not isinstance(routes_table, dict):
        raise ConfigError(f"[gateway] routes in {WHERE} must be a table of routes")
    kinds = {**BUILTIN_KINDS, **provider_kinds}
    routes = {}
    for name, spec in routes_table.items():
        routes[name] = _route(name, spec, kinds)
    return GatewaySettings(routes=routes)


def _route(name: str, spec: Any, kinds: Mapping[str, str]) -> Route:
    where = f'[gateway.routes."{name}"]'
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} in {WHERE} must be a table", hint=_EXAMPLE)
    if not name.strip() or len(name) > MAX_ROUTE_NAME or any(c.isspace() for c in name):
        raise ConfigError(
            f"{where} in {WHERE}: a route name is 1 to {MAX_ROUTE_NAME} characters, no spaces",
            hint='clients send it as `model`, e.g. [gateway.routes."gpt-fast"]',
        )
    _check_keys(spec, ROUTE_KEYS, where)
    allow_unpinned = spec.get("allow_unpinned", False)
    if not isinstance(allow_unpinned, bool):
        raise ConfigError(f"{where} allow_unpinned in {WHERE} must be true or false")
    if "model" not in spec:
        raise ConfigError(f"{where} in {WHERE} has no model", hint=_EXAMPLE)
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


_EXAMPLE = 'e.g. model = "openai:gpt-4o-mini-2024-07-18"'


def _model(value: Any, where: str, kinds: Mapping[str, str], allow_unpinned: bool) -> ModelRef:
    if not isinstance(value, str):
        raise ConfigError(f"{where} in {WHERE} must be a string", hint=_EXAMPLE)
    try:
        ref = parse_model(value)
    except ConfigError as exc:
        raise ConfigError(f"{where} in {WHERE}: {exc}", hint=exc.hint) from None
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
            raise type(exc)(f"{where} in {WHERE}: {exc}", hint=hint) from None
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
