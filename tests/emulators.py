"""Local HTTP emulator of hosted LLM APIs, for tests that drive the real SDKs.

`ModelServer` serves the OpenAI Chat Completions (`POST /v1/chat/completions`) and the
Anthropic Messages (`POST /v1/messages`) wire formats on 127.0.0.1, so the official
`openai` and `anthropic` clients can be pointed at it with `base_url`. Each request consumes
the next scripted behaviour (`ok`, `refusal`, `truncated`, `status`, `delay`, `malformed`,
`disconnect`), rendered in the format of the endpoint that received it:

    with ModelServer() as server:
        server.script(status(429, retry_after=2), ok({"category": "billing"}))
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test")
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Vendor = Literal["openai", "anthropic"]
DEFAULT_TEXT = "Hello from the emulator."
ISO_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
MALFORMED_BODY = b'{"id": "chatcmpl-1", "choices": ['


@dataclass(frozen=True)
class Ok:
    content: str | dict[str, Any] | None = None
    model: str | None = None
    fingerprint: str = "fp_emulator"
    input_tokens: int = 25
    output_tokens: int = 15
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    request_id: str | None = None  # the request-id header (a random one when None)


@dataclass(frozen=True)
class Refusal:
    text: str = "I can't help with that."


@dataclass(frozen=True)
class Truncated:
    content: str = '{"category": "supp'


@dataclass(frozen=True)
class Status:
    code: int
    retry_after: float | None = None
    message: str = "injected failure"


@dataclass(frozen=True)
class Delay:
    seconds: float
    then: Behaviour


@dataclass(frozen=True)
class Malformed:
    pass


@dataclass(frozen=True)
class Disconnect:
    pass


@dataclass(frozen=True)
class Respond:
    """Choose the behaviour from the request itself: `function(body, headers) -> Behaviour`."""

    function: Any


Behaviour = Ok | Refusal | Truncated | Status | Delay | Malformed | Disconnect | Respond


def ok(
    content: str | dict[str, Any] | None = None,
    *,
    model: str | None = None,
    fingerprint: str = "fp_emulator",
    input_tokens: int = 25,
    output_tokens: int = 15,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    request_id: str | None = None,
) -> Ok:
    """A success; `content=None` answers with JSON valid for the requested schema, if any."""
    return Ok(
        content,
        model,
        fingerprint,
        input_tokens,
        output_tokens,
        cached_tokens,
        reasoning_tokens,
        request_id,
    )


def respond(function: Any) -> Respond:
    """A behaviour picked per request: `function(body, headers)` returns the behaviour."""
    return Respond(function)


def refusal(text: str = "I can't help with that.") -> Refusal:
    return Refusal(text)


def truncated(content: str = '{"category": "supp') -> Truncated:
    """Output cut off by the token limit (`length` / `max_tokens`)."""
    return Truncated(content)


def status(
    code: int, *, retry_after: float | None = None, message: str = "injected failure"
) -> Status:
    """An HTTP error with the vendor's JSON error envelope and optional `retry-after`."""
    return Status(code, retry_after, message)


def delay(seconds: float, then: Behaviour | None = None) -> Delay:
    """Wait `seconds` (without blocking other requests), then answer with `then` (`ok()`)."""
    return Delay(seconds, then if then is not None else Ok())


def malformed() -> Malformed:
    """HTTP 200 with `content-type: application/json` and a body that is not JSON."""
    return Malformed()


def disconnect() -> Disconnect:
    """Close the TCP connection without sending any response bytes."""
    return Disconnect()


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    peer: tuple[str, int] | None = None  # the client's address: one per connection


def example_for(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    """A value valid for a (simple) JSON schema, as a structured-output model would produce."""
    if defs is None:
        defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    if "$ref" in schema:
        return example_for(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return example_for(options[0], defs)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: example_for(sub, defs) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        count = max(1, schema.get("minItems", 1))
        return [example_for(schema.get("items", {}), defs) for _ in range(count)]
    if kind == "string":
        if schema.get("format") == "date-time":
            return "2026-01-15T09:30:00Z"
        # anthropic's `messages.parse` moves `pattern` into the description: "{pattern: ...}".
        pattern = schema.get("pattern") or schema.get("description", "")
        if schema.get("format") == "date" or ISO_DATE_PATTERN in pattern:
            return "2026-01-15"
        return "example"
    if kind in ("integer", "number"):
        return min(max(1, schema.get("minimum", 1)), schema.get("maximum", 1))
    if kind == "boolean":
        return True
    return None


def requested_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request asks the output to follow (either vendor), if any."""
    fmt = body.get("response_format") or {}  # OpenAI
    if fmt.get("type") == "json_schema":
        return dict(fmt.get("json_schema", {}).get("schema") or {})
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format") or {}
    if fmt.get("type") == "json_schema":  # Anthropic
        return dict(fmt.get("schema") or {})
    return None


def _ok_text(behaviour: Ok, body: dict[str, Any]) -> str:
    if isinstance(behaviour.content, dict):
        return json.dumps(behaviour.content)
    if behaviour.content is not None:
        return behaviour.content
    schema = requested_schema(body)
    if schema is not None:
        return json.dumps(example_for(schema))
    if (body.get("response_format") or {}).get("type") == "json_object":
        return json.dumps({"message": DEFAULT_TEXT})
    return DEFAULT_TEXT


def _completion(
    vendor: Vendor, behaviour: Ok | Refusal | Truncated, body: dict[str, Any]
) -> dict[str, Any]:
    usage = behaviour if isinstance(behaviour, Ok) else Ok()
    model = usage.model or str(body.get("model", "emulated-model"))
    text: str | None
    if isinstance(behaviour, Ok):
        text, refused, finish, stop = _ok_text(behaviour, body), None, "stop", "end_turn"
    elif isinstance(behaviour, Refusal):
        text, refused, finish, stop = None, behaviour.text, "stop", "refusal"
    else:
        text, refused, finish, stop = behaviour.content, None, "length", "max_tokens"
    if vendor == "anthropic":
        details = {"type": "refusal", "category": None, "explanation": refused} if refused else None
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text or refused or ""}],
            "stop_reason": stop,
            "stop_sequence": None,
            "stop_details": details,
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": usage.cached_tokens,
            },
        }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": usage.fingerprint,
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "logprobs": None,
                "finish_reason": finish,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": refused,
                    "annotations": [],
                },
            }
        ],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        },
    }


def _openai_events(whole: dict[str, Any], body: dict[str, Any]) -> list[str]:
    """A completion as Chat Completions streams it: a role chunk, the content in pieces, a
    finish chunk, the usage chunk when `stream_options.include_usage` asks, then [DONE]."""
    usage = (body.get("stream_options") or {}).get("include_usage") is True
    text = whole["choices"][0]["message"]["content"] or ""
    pieces = [text[i : i + 8] for i in range(0, len(text), 8)]
    base = {k: whole[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in pieces]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        chunks = [{**c, "usage": None} for c in chunks]
        chunks.append({**base, "choices": [], "usage": whole["usage"]})
    return [*(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks), "data: [DONE]\n\n"]


def _anthropic_events(whole: dict[str, Any]) -> list[str]:
    """A message as the Messages API streams it: message_start (input usage), a text block
    in pieces between a ping, message_delta (stop_reason, output usage), message_stop."""
    text = whole["content"][0]["text"]
    usage = whole["usage"]
    start = {
        **whole,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": start}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {}),
    ]
    for i in range(0, len(text), 8):
        delta = {"type": "text_delta", "text": text[i : i + 8]}
        events.append(("content_block_delta", {"index": 0, "delta": delta}))
    stop = {"stop_reason": whole["stop_reason"], "stop_sequence": whole["stop_sequence"]}
    events += [
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": stop, "usage": {"output_tokens": usage["output_tokens"]}}),
        ("message_stop", {}),
    ]
    return [
        f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n" for name, data in events
    ]


# status code -> (error type, OpenAI error code); 5xx default to server_error / api_error.
ERROR_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    413: ("request_too_large", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    529: ("overloaded_error", None),
}


def _error(vendor: Vendor, failure: Status) -> JSONResponse:
    code = failure.code
    server_side = "api_error" if vendor == "anthropic" else "server_error"
    fallback = (server_side if code >= 500 else "invalid_request_error", None)
    kind, err_code = ERROR_TYPES.get(code, fallback)
    body: dict[str, Any]
    if vendor == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": failure.message}}
    else:
        body = {
            "error": {"message": failure.message, "type": kind, "param": None, "code": err_code}
        }
    headers = {} if failure.retry_after is None else {"retry-after": f"{failure.retry_after:g}"}
    return JSONResponse(body, status_code=code, headers=headers)


class ModelServer:
    """Both vendors' APIs on one uvicorn server running in a background thread."""

    paths: tuple[str, ...] = ("/v1/chat/completions", "/v1/messages")  # the POST endpoints

    def __init__(self) -> None:
        self.default: Behaviour = ok()
        self.requests: list[Received] = []
        self.stream_delay = 0.0  # seconds between the chunks of a streamed answer
        self.streams_finished = 0  # streamed answers sent to the end
        self.streams_cut = 0  # streamed answers whose client went away before the end
        self.delays_cut = 0  # delayed answers whose client went away during the delay
        self.port = 0
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each request (either endpoint) takes the next, then `default`."""
        with self._lock:
            self._script.extend(behaviours)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._script.clear()
            self.stream_delay = 0.0
            self.streams_finished = self.streams_cut = self.delays_cut = 0

    def start(self) -> ModelServer:
        routes = [Route(path, self._handle, methods=["POST"]) for path in self.paths]
        config = uvicorn.Config(
            Starlette(routes=routes),
            host="127.0.0.1",
            port=0,
            loop="asyncio",
            http="h11",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, name="model-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 5
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("model server failed to start")
            time.sleep(0.005)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        vendor: Vendor = "anthropic" if request.url.path.endswith("/messages") else "openai"
        with self._lock:
            peer = (request.client.host, request.client.port) if request.client else None
            self.requests.append(
                Received(request.url.path, dict(request.headers.items()), body, peer)
            )
            behaviour = self._script.popleft() if self._script else self.default
        return await self._respond(behaviour, vendor, body, request)

    async def _respond(
        self, behaviour: Behaviour, vendor: Vendor, body: dict[str, Any], request: Request
    ) -> Response:
        if isinstance(behaviour, Respond):
            chosen = behaviour.function(body, dict(request.headers.items()))
            return await self._respond(chosen, vendor, body, request)
        if isinstance(behaviour, Delay):
            loop = asyncio.get_running_loop()
            end = loop.time() + behaviour.seconds
            # Poll in small steps so a client that timed out does not keep a task alive.
            while (left := end - loop.time()) > 0:
                if await request.is_disconnected():
                    with self._lock:
                        self.delays_cut += 1
                    break
                await asyncio.sleep(min(left, 0.05))
            return await self._respond(behaviour.then, vendor, body, request)
        if isinstance(behaviour, Disconnect):
            await self._drop_connection(request)
            return Response(status_code=204)  # discarded by uvicorn: the connection is gone
        if isinstance(behaviour, Malformed):
            return Response(MALFORMED_BODY, media_type="application/json")
        if isinstance(behaviour, Status):
            return _error(vendor, behaviour)
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        if isinstance(behaviour, Ok) and behaviour.request_id is not None:
            request_id = behaviour.request_id
        header = "request-id" if vendor == "anthropic" else "x-request-id"
        if vendor == "openai" and body.get("stream") is True and isinstance(behaviour, Ok):
            return StreamingResponse(
                self._sent(_openai_events(_completion(vendor, behaviour, body), body)),
                media_type="text/event-stream",
                headers={header: request_id},
            )
        if vendor == "anthropic" and body.get("stream") is True:
            return StreamingResponse(
                self._sent(_anthropic_events(_completion(vendor, behaviour, body))),
                media_type="text/event-stream",
                headers={header: request_id},
            )
        return JSONResponse(_completion(vendor, behaviour, body), headers={header: request_id})

    async def _sent(self, events: list[str]) -> Any:
        """The events one by one (`stream_delay` apart), counted as finished or cut."""
        finished = False
        try:
            for index, event in enumerate(events):
                if index and self.stream_delay:
                    await asyncio.sleep(self.stream_delay)
                yield event
            finished = True
        finally:
            with self._lock:
                if finished:
                    self.streams_finished += 1
                else:
                    self.streams_cut += 1

    async def _drop_connection(self, request: Request) -> None:
        # ASGI has no "abort": find uvicorn's protocol for this client and close its
        # transport, then wait until uvicorn marks the request disconnected so nothing
        # (not even a 500) is written afterwards.
        client = tuple(request.scope.get("client") or ())
        connections = self._server.server_state.connections if self._server else set()
        for connection in list(connections):
            if getattr(connection, "client", None) == client:
                connection.transport.close()
        for _ in range(200):
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.005)
