"""Streamed completions: the upstream's server-sent events relayed to the client as they come.

The gateway always asks the upstream for usage (`stream_options.include_usage`), so a streamed
request is priced and budgeted like any other; the extra usage chunk is kept from a client that
did not ask for it. A client that goes away mid-stream cancels the upstream request (its
connection is closed), and the run is recorded as `cancelled` with what had arrived. An
upstream that sends only keep-alives (`: comments`, Anthropic's pings) is cut off the route's
timeout after its last data event, and the run recorded as failed on a `timeout`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic_core import from_json, to_json

from smallops.error_types import PROVIDER_FAILURES
from smallops.gateway import upstream
from smallops.gateway.asgi import Receive, Send
from smallops.gateway.errors import error_body
from smallops.gateway.runs import Leg, usage_of
from smallops.gateway.sse import EventSplitter, event_data
from smallops.gateway.upstream import Streamed, as_provider_error
from smallops.providers.base import ProviderError
from smallops.records import Usage

SSE = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class Relay:
    """What a stream carried, taken from its events as they pass."""

    def __init__(self, request: dict[str, Any], leg: Leg) -> None:
        options = request.get("stream_options")
        self.wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        self.leg = leg
        self.pieces: list[str] = []
        self.usage: Usage | None = None
        self.done = False
        self.error: str | None = None  # an `error` event's message: the upstream gave up
        self.events = 0
        self._events = EventSplitter()

    def feed(self, chunk: bytes) -> bytes:
        """Whole events of `chunk` (with what was left of the last), as the client gets them;
        CRLF line ends (which SSE allows) read as LF."""
        out = [kept for event in self._events.feed(chunk) if (kept := self._kept(event))]
        if self._events.pending > upstream.MAX_EVENT_BYTES:
            raise upstream.event_too_large()
        return b"".join(out)

    def rest(self) -> bytes:
        """What followed the last blank line, as a last event if it can be read (a `data:
        [DONE]` ended by one newline or none); an event cut short is dropped, so the client
        reads the error that follows, not half a chunk."""
        rest = self._events.rest()
        payload = event_data(rest)
        if payload is None or not _readable(payload):
            return b""
        return self.feed(rest.rstrip(b"\n") + b"\n\n")

    def _kept(self, event: bytes) -> bytes | None:
        """Note what the event says; the event as the client gets it, or None for the usage
        chunk the client did not ask for. Asked for usage, an upstream also puts `"usage":
        null` in every other chunk: that member goes too, so the chunks are the ones the
        client would have had from the upstream itself. An event's `data:` lines are one
        payload, joined by newlines, as the client's SSE reader joins them."""
        payload = event_data(event)
        if payload is None:
            return event
        if payload == b"[DONE]":
            self.done = True
            return event
        try:
            chunk = from_json(payload)
        except ValueError:
            return event
        if not isinstance(chunk, dict):
            return event
        self.events += 1
        error = chunk.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            self.error = message[:500] if isinstance(message, str) else "no message"
            return event
        if self.leg.served is None and isinstance(chunk.get("model"), str):
            self.leg.served = chunk["model"]
            fingerprint = chunk.get("system_fingerprint")
            self.leg.fingerprint = fingerprint if isinstance(fingerprint, str) else None
        usage = usage_of(chunk)
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices:
            self._take_text(choices)
        elif usage is not None and not self.wants_usage:
            return None
        if not self.wants_usage and "usage" in chunk and chunk["usage"] is None:
            if b"\n" in payload:  # over several lines: left as it came
                return event
            return _without_null_usage(event, payload, chunk)
        return event

    def _take_text(self, choices: list[Any]) -> None:
        """The first choice's text (with `n` above 1, the others travel in the same stream)."""
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                self.pieces.append(content)


_NULL_USAGE = b',"usage":null}'  # where OpenAI's compact chunks carry it: last


def _without_null_usage(event: bytes, payload: bytes, chunk: dict[str, Any]) -> bytes:
    """The event with its chunk's `"usage": null` member left out: cut from the bytes where
    the chunk ends with it, else the chunk written again without it."""
    if payload.endswith(_NULL_USAGE):
        shorter = payload[: -len(_NULL_USAGE)] + b"}"
    else:
        del chunk["usage"]
        shorter = to_json(chunk)
    return event.replace(payload, shorter, 1)


def _readable(payload: bytes) -> bool:
    if payload == b"[DONE]":
        return True
    try:
        from_json(payload)
    except ValueError:
        return False
    return True


async def relay(
    request: dict[str, Any],
    leg: Leg,
    response: Streamed,
    receive: Receive,
    send: Send,
    headers: list[tuple[bytes, bytes]],
) -> bool:
    """Relay the stream; True when it ended with [DONE]. The leg gets the text, the usage, and
    why it stopped short (the client left, or the upstream failed)."""
    state = Relay(request, leg)
    await send({"type": "http.response.start", "status": 200, "headers": [*SSE, *headers]})
    sent_at = time.perf_counter()

    async def pump() -> None:
        try:
            async for chunk in response.chunks():
                seen = state.events
                out = state.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if state.events != seen:  # after the send: a slow client is not a silent upstream
                    response.progressed()
            rest = state.rest()
            if rest:
                await send({"type": "http.response.body", "body": rest, "more_body": True})
        finally:
            await response.aclose()

    async def client_left() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    pumping = asyncio.create_task(pump())
    watching = asyncio.create_task(client_left())
    try:
        await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, watching):
            if not task.done():
                task.cancel()
        await asyncio.gather(pumping, watching, return_exceptions=True)
    failure = None if not pumping.done() or pumping.cancelled() else pumping.exception()
    _settle(state, leg, request, sent_at)
    left = watching.done() and not watching.cancelled()
    if left and pumping.cancelled() and state.error is None and not state.done:
        leg.error_type = "cancelled"
        leg.error_message = (
            f"the client disconnected after {state.events} chunks; the upstream request was "
            f"cancelled" + ("" if state.usage else " (usage estimated from what arrived)")
        )
        return False
    if state.error is not None:  # the client has the upstream's own error event
        leg.error_type = "server_error"
        leg.error_message = f"the upstream stream failed: {state.error}"
        await _try_send(send, b"", more=False)
        return False
    if failure is not None or not state.done:
        if failure is not None:
            error = as_provider_error(failure)
            leg.error_type, leg.error_message = error.kind, error.message
        else:
            leg.error_type = "bad_response"
            leg.error_message = "the upstream stream ended without [DONE]"
        body = error_body(leg.error_message, "server_error", "upstream_stream_failed")
        await _try_send(send, b"data: " + body + b"\n\n")
        return False
    await _try_send(send, b"", more=False)
    return True


def upstream_failure(leg: Leg) -> ProviderError | None:
    """How a stream that ended counts for the breaker: a failure of the upstream after it
    started (an error event, a cut, a stall) as the same failure of a whole answer would; a
    client that left, or a stream that ended well, as a success."""
    kind = leg.error_type
    if kind is None or kind not in PROVIDER_FAILURES:
        return None
    return ProviderError(kind, leg.error_message or kind)


def _settle(state: Relay, leg: Leg, request: dict[str, Any], sent_at: float) -> None:
    """Put what the stream carried on the leg: the text, and the usage (estimated when the
    stream stopped before the usage chunk: the request's size, one token per content piece)."""
    leg.output = "".join(state.pieces)
    if state.usage is not None:
        leg.usage = state.usage
    else:
        prompt = len(to_json(request.get("messages"))) // 4
        leg.usage = Usage(input_tokens=prompt, output_tokens=len(state.pieces))
    if leg.attempts:
        leg.attempts[-1].update(
            stream_ms=round((time.perf_counter() - sent_at) * 1000, 3),
            response=leg.output,
            model=leg.served,
            usage=leg.usage.__dict__,
        )


async def _try_send(send: Send, body: bytes, more: bool = True) -> None:
    try:
        await send({"type": "http.response.body", "body": body, "more_body": more})
        if more:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        pass
