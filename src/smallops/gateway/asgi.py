"""The ASGI plumbing the gateway needs and nothing more: the bearer key, the request body
(bounded), JSON answers and OpenAI-shaped errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic_core import from_json

from smallops.gateway.errors import GatewayError, bad_request

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
MAX_BODY = 32 * 1024 * 1024  # bytes of request body accepted (images travel inline)
JSON = [(b"content-type", b"application/json")]


class Handled(GatewayError):
    """Ends a request that gets no answer: its client has gone."""

    def __init__(self) -> None:
        super().__init__(0, "", "")


def bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


async def read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Handled
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise GatewayError(
                413,
                f"the request body is over {MAX_BODY // 2**20} MiB",
                "invalid_request_error",
                "request_too_large",
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_request(body: bytes) -> dict[str, Any]:
    """The request as a dict; a 400 when it is not JSON (NaN and Infinity are not: they would
    go upstream as they came) or when a field the gateway acts on itself is malformed."""
    try:
        request = from_json(body, allow_inf_nan=False)
    except ValueError:
        raise bad_request("the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(request, dict):
        raise bad_request("the request body must be a JSON object")
    if not isinstance(request.get("model"), str):
        raise bad_request("'model' is required: the name of a route", "model")
    if not isinstance(request.get("messages"), list):
        raise bad_request("'messages' is required: a list of messages", "messages")
    if request.get("stream") is not None and not isinstance(request["stream"], bool):
        raise bad_request("'stream' must be true or false", "stream", "invalid_type")
    options = request.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options", "invalid_type")
    return request


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    length = (b"content-length", str(len(body)).encode())
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON, length, *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_error(
    send: Send, error: GatewayError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    if isinstance(error, Handled):
        return
    extra = [(k.encode(), v.encode()) for k, v in error.headers.items()]
    extra.append((b"x-should-retry", b"true" if error.retry else b"false"))
    await respond(send, error.status, error.body(), [*(headers or []), *extra])
