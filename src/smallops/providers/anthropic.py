"""Anthropic Messages through the official `anthropic` SDK (the `anthropic` extra).

Structured output uses the API's native `output_config.format` JSON schema.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from smallops.config import SecretSettings
from smallops.errors import MissingExtraError
from smallops.providers._sdk import (
    SdkClients,
    key_source,
    parse_body,
    public_endpoint,
    resolve_base_url,
    sdk_arguments,
)
from smallops.providers.base import Params, Provider, ProviderError, Reply
from smallops.records import Usage
from smallops.secret_refs import SecretRef

DEFAULT_MAX_TOKENS = 1024  # the Messages API requires one
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "refusal",
}


def _sdk() -> ModuleType:
    try:
        import anthropic
    except ImportError:
        raise MissingExtraError("anthropic", "anthropic", "the anthropic provider") from None
    return anthropic


class AnthropicProvider(SdkClients, Provider):
    """Claude models through the Messages API."""

    kind = "anthropic"

    def __init__(
        self,
        name: str = "anthropic",
        *,
        base_url: str | None = None,
        api_key: SecretRef | str | None = None,
        api_key_env: str | None = None,
        secrets: SecretSettings | None = None,
        root: Path | None = None,
    ) -> None:
        """As OpenAIProvider's; the key is ANTHROPIC_API_KEY by default."""
        self.name = name
        self.base_url = resolve_base_url(self.kind, base_url)
        self.endpoint = public_endpoint(self.base_url)
        self.keys = key_source(
            name, api_key, api_key_env, "ANTHROPIC_API_KEY", secrets, root, keyless=False
        )

    def prepare(self, model: str, output: type[BaseModel] | None, params: Params) -> dict[str, Any]:
        _sdk()
        prepared: dict[str, Any] = {
            "model": model,
            "max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if output is not None:
            from anthropic.lib._parse._transform import transform_schema

            schema = transform_schema(output.model_json_schema())
            prepared["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        if params.temperature is not None:
            prepared["temperature"] = params.temperature
        return prepared

    def request(self, prepared: dict[str, Any], messages: list[dict[str, str]]) -> dict[str, Any]:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        request = {**prepared, "messages": turns}
        if system:
            request["system"] = system
        return request

    def send(self, request: dict[str, Any], timeout: float) -> Reply:
        sdk = _sdk()
        response = self.call(sdk.Anthropic, sdk, lambda client: _create(client, request, timeout))
        return _reply(response.http_response)

    async def asend(self, request: dict[str, Any], timeout: float) -> Reply:
        sdk = _sdk()
        response = await self.acall(
            sdk.AsyncAnthropic, sdk, lambda client: _create(client, request, timeout)
        )
        return _reply(response.http_response)


def _create(client: Any, request: dict[str, Any], timeout: float) -> Any:
    """Send the request (the raw response; awaitable from the async client)."""
    arguments = sdk_arguments(client.messages.create, request)
    return client.messages.with_raw_response.create(**arguments, timeout=timeout)


def _reply(http_response: Any) -> Reply:
    body, raw = parse_body(http_response)
    blocks = body.get("content")
    if not isinstance(blocks, list):
        raise ProviderError("bad_response", "the response has no content", raw=raw)
    text = "".join(
        b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"
    )
    stop_reason = str(body.get("stop_reason") or "end_turn")
    finish = _FINISH.get(stop_reason, stop_reason)
    refusal = None
    if finish == "refusal":
        details = body.get("stop_details") or {}
        refusal = details.get("explanation") or text or "the model refused"
    usage = body.get("usage") or {}
    cache_read = usage.get("cache_read_input_tokens") or 0
    cache_write = usage.get("cache_creation_input_tokens") or 0
    output_details = usage.get("output_tokens_details") or {}
    return Reply(
        text=text if finish != "refusal" else None,
        finish=finish,
        refusal=refusal,
        model=body.get("model"),
        raw=raw,
        usage=Usage(
            input_tokens=(usage.get("input_tokens") or 0) + cache_read + cache_write,
            output_tokens=usage.get("output_tokens") or 0,
            cached_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=output_details.get("thinking_tokens") or 0,
        ),
        status_code=http_response.status_code,
        request_id=http_response.headers.get("request-id"),
    )
