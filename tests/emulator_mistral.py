"""Mistral's La Plateforme API (`POST /v1/chat/completions`), as it differs from OpenAI's.

Teams call Mistral through the OpenAI SDK at `https://api.mistral.ai/v1`. Its Chat
Completions look alike, but not the same, and `MistralServer` answers the way it does:

- ids are 32 hex digits with no `chatcmpl-` prefix; no `system_fingerprint`, no
  `service_tier`; the message has `tool_calls: null` and no `refusal` or `annotations`;
- `usage` is `prompt_tokens`, `total_tokens`, `completion_tokens` and `prompt_audio_seconds`;
- a stream always carries the usage, in its last chunk beside the `finish_reason`, and knows
  no `stream_options`: like any field its schema lacks, it is refused with a 422
  (`extra_forbidden`, pydantic's wording, in `message.detail`);
- errors are a flat envelope, `{"object": "error", "message", "type", "param", "code"}` (a 429
  is type `rate_limited`, code "1300"), not OpenAI's `{"error": {...}}`;
- the request id is in `mistral-correlation-id` (and `x-kong-request-id`), not `x-request-id`.

It takes the same scripted behaviours as ModelServer (`ok`, `status`, `delay`, `respond`, ...):

    with MistralServer() as mistral:
        mistral.script(status(429), ok())
        client = openai.OpenAI(base_url=mistral.base_url, api_key="sk-test")
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from emulators import Behaviour, ModelServer, Ok, Refusal, Status, Truncated, Vendor, _ok_text

#: The request fields Mistral's chat completions schema has; any other is a 422.
FIELDS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stream",
        "stop",
        "random_seed",
        "response_format",
        "tools",
        "tool_choice",
        "presence_penalty",
        "frequency_penalty",
        "n",
        "prediction",
        "parallel_tool_calls",
        "prompt_mode",
        "safe_prompt",
    }
)
# status code -> (Mistral's error type, its code)
ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", None),
    404: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("rate_limited", "1300"),
}


def extra_fields(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The fields Mistral does not know, as its 422 lists them (`stream_options` by its keys)."""
    found = []
    for name, value in body.items():
        if name in FIELDS:
            continue
        if name == "stream_options" and isinstance(value, dict) and value:
            for key, inner in value.items():
                found.append(_forbidden(["body", name, key], inner))
        else:
            found.append(_forbidden(["body", name], value))
    return found


def _forbidden(loc: list[str], value: Any) -> dict[str, Any]:
    return {
        "type": "extra_forbidden",
        "loc": loc,
        "msg": "Extra inputs are not permitted",
        "input": value,
    }


def completion(behaviour: Ok | Refusal | Truncated, body: dict[str, Any]) -> dict[str, Any]:
    usage = behaviour if isinstance(behaviour, Ok) else Ok()
    if isinstance(behaviour, Ok):
        text, finish = _ok_text(behaviour, body), "stop"
    elif isinstance(behaviour, Refusal):  # Mistral has no refusal field: the model says it
        text, finish = behaviour.text, "stop"
    else:
        text, finish = behaviour.content, "length"
    return {
        "id": uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": usage.model or str(body.get("model", "mistral-small-latest")),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "tool_calls": None, "content": text},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "completion_tokens": usage.output_tokens,
            "prompt_audio_seconds": None,
        },
    }


def events(whole: dict[str, Any]) -> list[str]:
    """A completion as Mistral streams it: a role chunk, the content in pieces, then the
    finish chunk carrying the usage, then [DONE]."""
    text = whole["choices"][0]["message"]["content"] or ""
    base = {k: whole[k] for k in ("id", "object", "created", "model")}
    base["object"] = "chat.completion.chunk"
    deltas = [{"role": "assistant", "content": ""}] + [
        {"content": text[i : i + 6]} for i in range(0, len(text), 6)
    ]
    chunks: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas
    ]
    finish = whole["choices"][0]["finish_reason"]
    chunks.append(
        {
            **base,
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": finish}],
            "usage": whole["usage"],
        }
    )
    return [*(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks), "data: [DONE]\n\n"]


def error(code: int, message: Any, headers: dict[str, str]) -> JSONResponse:
    kind, err_code = ERROR_TYPES.get(
        code, ("internal_server_error" if code >= 500 else "invalid_request_error", None)
    )
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": err_code}
    return JSONResponse(body, status_code=code, headers=headers)


class MistralServer(ModelServer):
    """Mistral's chat completions on a uvicorn server of its own (a provider of its own)."""

    paths = ("/v1/chat/completions",)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _respond(
        self, behaviour: Behaviour, vendor: Vendor, body: dict[str, Any], request: Request
    ) -> Response:
        ids = {"mistral-correlation-id": str(uuid.uuid4()), "x-kong-request-id": uuid.uuid4().hex}
        extra = extra_fields(body)
        if extra:  # checked before anything else, as Mistral validates the request first
            return error(422, {"detail": extra}, ids)
        if isinstance(behaviour, Status):
            if behaviour.retry_after is not None:
                ids["retry-after"] = f"{behaviour.retry_after:g}"
            return error(behaviour.code, behaviour.message, ids)
        if not isinstance(behaviour, (Ok, Refusal, Truncated)):
            return await super()._respond(behaviour, vendor, body, request)
        if isinstance(behaviour, Ok) and behaviour.request_id is not None:
            ids["mistral-correlation-id"] = behaviour.request_id
        whole = completion(behaviour, body)
        if body.get("stream") is True:
            return StreamingResponse(
                self._sent(events(whole)), media_type="text/event-stream", headers=ids
            )
        return JSONResponse(whole, headers=ids)
