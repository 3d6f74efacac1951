"""OpenAI Chat Completions, and every OpenAI-compatible server (Ollama, vLLM, Azure, OpenRouter).

Structured output uses strict `json_schema`; the SDK's own retries are off (ours live in calls).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from smallops.config import SecretSettings, own_key_variable
from smallops.providers._sdk import (
    SdkClients,
    key_source,
    parse_body,
    public_endpoint,
    resolve_base_url,
)
from smallops.providers.base import Params, Provider, ProviderError, Reply
from smallops.records import Usage
from smallops.secret_refs import SecretRef


class OpenAIProvider(SdkClients, Provider):
    """Chat Completions through the official `openai` SDK.

    `compatible=True` marks a third-party server: it gets `max_tokens` (widely supported)
    instead of OpenAI's `max_completion_tokens`, and needs no real API key.
    """

    kind = "openai"

    def __init__(
        self,
        name: str = "openai",
        *,
        base_url: str | None = None,
        api_key: SecretRef | str | None = None,
        api_key_env: str | None = None,
        compatible: bool = False,
        secrets: SecretSettings | None = None,
        root: Path | None = None,
    ) -> None:
        """`api_key` says where the key lives (a reference, as in smallops.toml); the older
        `api_key_env` names an environment variable; by default OPENAI_API_KEY, and for a
        compatible server <NAME>_API_KEY (OpenAI's key is never sent to another server).
        `secrets` is how keys from a store are cached; `root` the project folder (where
        `status` reads how they fare, and where a `command:` runs)."""
        self.name = name
        self.base_url = resolve_base_url(self.kind, base_url)
        self.endpoint = public_endpoint(self.base_url)
        self.compatible = compatible
        default = own_key_variable(name) if compatible else "OPENAI_API_KEY"
        self.keys = key_source(
            name, api_key, api_key_env, default, secrets, root, keyless=compatible
        )

    def prepare(self, model: str, output: type[BaseModel] | None, params: Params) -> dict[str, Any]:
        prepared: dict[str, Any] = {"model": model}
        if output is not None:
            from openai.lib._pydantic import to_strict_json_schema

            prepared["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": output.__name__[:64],
                    "schema": to_strict_json_schema(output),
                    "strict": True,
                },
            }
        if params.temperature is not None:
            prepared["temperature"] = params.temperature
        if params.max_tokens is not None:
            key = "max_tokens" if self.compatible else "max_completion_tokens"
            prepared[key] = params.max_tokens
        return prepared

    def send(self, request: dict[str, Any], timeout: float) -> Reply:
        import openai

        arguments = _arguments(request)
        response = self.call(
            openai.OpenAI,
            openai,
            lambda client: client.chat.completions.with_raw_response.create(
                **arguments, timeout=timeout
            ),
        )
        return _reply(response.http_response)

    async def asend(self, request: dict[str, Any], timeout: float) -> Reply:
        import openai

        arguments = _arguments(request)
        response = await self.acall(
            openai.AsyncOpenAI,
            openai,
            lambda client: client.chat.completions.with_raw_response.create(
                **arguments, timeout=timeout
            ),
        )
        return _reply(response.http_response)


def _arguments(request: dict[str, Any]) -> dict[str, Any]:
    """The request as SDK arguments, its response format (a JSON schema fixed per workflow) in
    `extra_body`: the SDK would otherwise walk the whole schema on every call to turn a plain
    dict into the same dict. The JSON on the wire is identical."""
    if "response_format" not in request:
        return request
    arguments = {k: v for k, v in request.items() if k != "response_format"}
    arguments["extra_body"] = {"response_format": request["response_format"]}
    return arguments


def _reply(http_response: Any) -> Reply:
    body, raw = parse_body(http_response)
    try:
        choice = body["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise ProviderError("bad_response", "the response has no choices", raw=raw) from None
    refusal = message.get("refusal")
    finish = "refusal" if refusal else str(choice.get("finish_reason") or "stop")
    usage = body.get("usage") or {}
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Reply(
        text=message.get("content"),
        finish=finish,
        refusal=refusal,
        model=body.get("model"),
        fingerprint=body.get("system_fingerprint"),
        raw=raw,
        usage=Usage(
            input_tokens=usage.get("prompt_tokens") or 0,
            output_tokens=usage.get("completion_tokens") or 0,
            cached_tokens=prompt_details.get("cached_tokens") or 0,
            reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
        ),
        status_code=http_response.status_code,
        request_id=http_response.headers.get("x-request-id"),
    )
