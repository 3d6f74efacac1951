"""A route's Anthropic model: its Messages endpoint behind the same interface as an OpenAI
upstream, so retries, breakers, fallbacks, streaming and the log treat both alike.

The request goes out translated (anthropic_wire.py), with the provider's key in `x-api-key`;
the answer comes back as a `chat.completion`, or as `chat.completion.chunk` events ending with
a usage chunk and [DONE], as an OpenAI upstream asked for usage sends them. Errors keep
Anthropic's status, so a 429, a 529 (overloaded) or a 5xx is retried and may open the breaker,
as any upstream's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic_core import from_json, to_json

from smallops.gateway import anthropic_wire
from smallops.gateway.upstream import USER_AGENT, Answer, Streamed, Upstream, provider_key
from smallops.providers.base import ProviderError


class AnthropicUpstream(Upstream):
    """An Anthropic provider's `/v1/messages`, spoken to in its own format."""

    path = "/v1/messages"

    def request_body(
        self, request: dict[str, Any], model: str, stream: bool
    ) -> tuple[dict[str, Any], bytes]:
        sent = anthropic_wire.messages_request(request, model, stream)
        return sent, to_json(sent)

    @staticmethod
    def sent_key(headers: dict[str, str]) -> str:
        return headers["x-api-key"]

    async def _headers(self, key: str | None = None) -> dict[str, str]:
        if key is None:
            key = await provider_key(self.provider)
        return {
            "x-api-key": key,
            "anthropic-version": anthropic_wire.ANTHROPIC_VERSION,
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": USER_AGENT,
        }

    async def post(self, body: bytes, timeout: float) -> Answer:
        """The answer as a `chat.completion`; its own body kept as `wire` for the log."""
        answer = await super().post(body, timeout)
        try:
            message = from_json(answer.content)
        except ValueError:
            raw = answer.content.decode("utf-8", "replace")[:2000]
            raise ProviderError(
                "bad_response", "the upstream body is not valid JSON", raw=raw
            ) from None
        completion = anthropic_wire.completion(message, int(time.time()))
        return Answer(200, _request_id(answer.headers), to_json(completion), wire=answer.content)

    async def open_stream(self, body: bytes, timeout: float) -> Streamed:
        response = await super().open_stream(body, timeout)
        return _TranslatedStream(response, anthropic_wire.StreamTranslator(int(time.time())))


def _request_id(headers: httpx.Headers) -> httpx.Headers:
    """Anthropic's `request-id` as the `x-request-id` an OpenAI client reads."""
    request_id = headers.get("request-id")
    return httpx.Headers({"x-request-id": request_id} if request_id else {})


class _TranslatedStream:
    """Anthropic's events as they arrive, handed on as Chat Completions chunks."""

    def __init__(self, response: Streamed, translator: anthropic_wire.StreamTranslator) -> None:
        self._response, self._translator = response, translator
        self.headers = _request_id(response.headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The translated chunks; a stream that stops before message_stop (an error event, a
        stall, a cut) ends with the usage Anthropic counted, then raises why it stopped."""
        translator = self._translator
        try:
            async for chunk in self._response.chunks():
                out = translator.feed(chunk)
                if out:
                    yield out
                if translator.failure is not None:
                    raise translator.failure
        except Exception:
            if counted := translator.counted():
                yield counted
            raise
        if counted := translator.counted():
            yield counted

    def progressed(self) -> None:
        self._response.progressed()

    async def aclose(self) -> None:
        await self._response.aclose()
