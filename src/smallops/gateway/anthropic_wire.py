"""OpenAI's Chat Completions to and from Anthropic's Messages API, for plain chat only.

The request is translated one way, the answer (whole, or as server-sent events) the other.
These are pure functions and a small stream translator, with no I/O. What is translated,
ignored or refused is defined once here (see gateway_config.py's docstring). A request that
asks for more than plain chat gets a 400 naming the field before anything is sent: silently
dropping tools or a JSON schema would give an answer the client did not ask for.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json, to_json

from smallops.error_types import ProviderFailure
from smallops.gateway import upstream
from smallops.gateway.errors import GatewayError, bad_request, unsupported
from smallops.gateway.sse import EventSplitter, event_data
from smallops.providers.base import ProviderError

#: What `max_tokens` is when the client sets none (Anthropic requires one).
DEFAULT_MAX_TOKENS = 4096
ANTHROPIC_VERSION = "2023-06-01"

#: Request fields the translation carries over.
TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "user",
    }
)
#: Request fields dropped because they change nothing of the answer.
IGNORED = frozenset({"seed", "store", "metadata", "service_tier", "parallel_tool_calls"})
#: Request fields dropped at their neutral value, refused at any other.
NEUTRAL: dict[str, Any] = {
    "n": 1,
    "logprobs": False,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "response_format": {"type": "text"},
}
SYSTEM_ROLES = ("system", "developer")
CHAT_ROLES = ("user", "assistant")
#: Message fields dropped: Anthropic has no place for them.
IGNORED_MESSAGE_KEYS = frozenset({"name", "refusal", "annotations"})

#: Anthropic's stop_reason as OpenAI's finish_reason.
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
}
#: Anthropic's error types, in a stream, as ProviderError kinds (errors.py has them as
#: OpenAI's error types).
STREAM_ERROR_KINDS: dict[str, ProviderFailure] = {
    "rate_limit_error": "rate_limited",
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "timeout",
}


# -- the request ---------------------------------------------------------------------------


def check(request: dict[str, Any], route: str) -> None:
    """GatewayError (400, the field named in `param`) when the request asks for more than
    plain chat; a null field counts as absent, as the OpenAI API has it."""
    for name, value in request.items():
        if value is None or name in TRANSLATED or name in IGNORED:
            continue
        if name in NEUTRAL:
            if _is_neutral(NEUTRAL[name], value):
                continue
            raise _unsupported(name, route, _other_than(name, value))
        if name in ("tools", "functions") and value == []:
            continue
        raise _unsupported(name, route)
    messages = request["messages"]
    for index, message in enumerate(messages):
        _check_message(message, f"messages[{index}]", route)
    if not any(isinstance(m, dict) and m.get("role") in CHAT_ROLES for m in messages):
        raise bad_request(
            "a route to an Anthropic model needs at least one user message",
            "messages",
            "invalid_value",
        )


def _is_neutral(neutral: Any, value: Any) -> bool:
    if isinstance(neutral, bool) or isinstance(value, bool):
        return value is neutral
    return bool(value == neutral)


def _other_than(name: str, value: Any) -> str:
    if name == "response_format" and isinstance(value, dict):
        kind = value.get("type")
        return f"response_format of type {str(kind)[:40]!r}"
    return f"{name!r} other than {NEUTRAL[name]}"


def _check_message(message: Any, where: str, route: str) -> None:
    if not isinstance(message, dict):
        raise bad_request(f"{where} must be an object with a role and content", where)
    role = message.get("role")
    if role is None:
        raise bad_request(
            f"{where}.role is required: system, developer, user or assistant",
            f"{where}.role",
            "invalid_value",
        )
    if role not in SYSTEM_ROLES and role not in CHAT_ROLES:
        role_text = role if isinstance(role, str) else type(role).__name__
        raise _unsupported(f"{where}.role", route, f"the role {role_text[:40]!r}")
    for name, value in message.items():
        if name in ("role", "content") or name in IGNORED_MESSAGE_KEYS:
            continue
        if value is None or value == []:
            continue
        raise _unsupported(f"{where}.{name}", route)
    _check_content(message.get("content"), f"{where}.content", route)


def _check_content(content: Any, where: str, route: str) -> None:
    """A message's content must be a string or a list of text parts."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise bad_request(
            f"{where} must be a string or a list of text parts", where, "invalid_value"
        )
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            shown = kind if isinstance(kind, str) else "not a text part"
            raise _unsupported(
                f"{where}[{index}].type", route, f"a content part of type {shown[:40]!r}"
            )


def _joined(content: Any) -> str:
    """A system message's content as one string."""
    if isinstance(content, str):
        return content
    return "\n\n".join(part["text"] for part in content)


def _unsupported(param: str, route: str, what: str | None = None) -> GatewayError:
    return unsupported(
        f"{what or repr(param)} is not supported on route {route!r}, which goes to an Anthropic "
        "model: the gateway translates plain chat only (text messages, max_tokens, "
        "temperature, top_p, stop)",
        param,
    )


def messages_request(request: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The Messages API request for a checked Chat Completions request (see `check`)."""
    system = []
    turns = []
    for message in request["messages"]:
        role, content = message["role"], message["content"]
        if role in SYSTEM_ROLES:
            system.append(_joined(content))
        else:
            blocks = content if isinstance(content, str) else _blocks(content)
            turns.append({"role": role, "content": blocks})
    most = request.get("max_completion_tokens")
    if most is None:
        most = request.get("max_tokens")
    sent: dict[str, Any] = {
        "model": model,
        "max_tokens": DEFAULT_MAX_TOKENS if most is None else most,
        "messages": turns,
    }
    joined = "\n\n".join(text for text in system if text)
    if joined:  # Anthropic refuses an empty text block; an empty system says nothing anyway
        sent["system"] = joined
    for name in ("temperature", "top_p"):
        if request.get(name) is not None:
            sent[name] = request[name]
    stop = request.get("stop")
    if stop is not None:
        sent["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if isinstance(request.get("user"), str):
        sent["metadata"] = {"user_id": request["user"]}
    if stream:
        sent["stream"] = True
    return sent


def _blocks(parts: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"type": "text", "text": part["text"]} for part in parts]


# -- the answer ----------------------------------------------------------------------------


def completion(message: Any, created: int) -> dict[str, Any]:
    """An Anthropic message as a `chat.completion`; ProviderError("bad_response") when the
    body is not a message."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise ProviderError("bad_response", "the upstream body is not an Anthropic message")
    text = "".join(
        block["text"]
        for block in message["content"]
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )
    return {
        "id": _string(message.get("id")) or "msg",
        "object": "chat.completion",
        "created": created,
        "model": _string(message.get("model")),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason")),
            }
        ],
        "usage": usage(message.get("usage")),
    }


def finish_reason(stop_reason: Any) -> str:
    return FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def usage(counts: Any) -> dict[str, Any]:
    """Anthropic's usage as OpenAI's: the prompt counts cache reads and writes too (as
    OpenAI's does); cache writes, priced above plain input, are kept apart as well."""
    counts = counts if isinstance(counts, dict) else {}
    fresh, read = _count(counts, "input_tokens"), _count(counts, "cache_read_input_tokens")
    written, output = _count(counts, "cache_creation_input_tokens"), _count(counts, "output_tokens")
    prompt = fresh + read + written
    shown: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read},
    }
    if written:
        shown["cache_creation_input_tokens"] = written
    return shown


def _count(counts: dict[str, Any], name: str) -> int:
    value = counts.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class StreamTranslator:
    """Anthropic's server-sent events in, `chat.completion.chunk` events out, ending with the
    usage chunk (which the relay keeps from a client that did not ask for it) and [DONE]."""

    def __init__(self, created: int) -> None:
        self.created = created
        self.ended = False
        #: An error event, or an event that cannot be read: raised once what came before it
        #: has been handed on (see `feed`).
        self.failure: ProviderError | None = None
        self._base: dict[str, Any] | None = None
        self._usage: dict[str, Any] = {}
        self._texts = 0
        self._events = EventSplitter()

    def feed(self, data: bytes) -> bytes:
        """The chunks for the whole events in `data` (with what was left of the last); after
        an error event, `failure` says why and the rest is not read."""
        out: list[bytes] = []
        for event in self._events.feed(data):
            if self.failure is not None:
                break
            try:
                out.extend(self._event(event))
            except ProviderError as error:
                self.failure = error
        if self._events.pending > upstream.MAX_EVENT_BYTES and self.failure is None:
            self.failure = upstream.event_too_large()
        return b"".join(out)

    def counted(self) -> bytes:
        """For a stream that ends before message_stop: the usage chunk with what Anthropic
        counted so far (its input at message_start; its output, or a token a text delta), so
        the run is priced on Anthropic's counts, not an estimate; empty before message_start."""
        if self.ended or self._base is None:
            return b""
        counts = dict(self._usage)
        counts["output_tokens"] = max(_count(counts, "output_tokens"), self._texts)
        return _sse({**self._base, "choices": [], "usage": usage(counts)})

    def _event(self, event: bytes) -> list[bytes]:
        data = event_data(event)
        if data is None:
            return []
        try:
            payload = from_json(data)
        except ValueError:
            raise ProviderError(
                "bad_response", "the upstream sent an event that is not JSON"
            ) from None
        kind = payload.get("type") if isinstance(payload, dict) else None
        if kind == "message_start":
            message = payload.get("message")
            message = message if isinstance(message, dict) else {}
            self._base = {
                "id": _string(message.get("id")) or "msg",
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": _string(message.get("model")),
            }
            self._add_usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""}, None)]
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    self._texts += 1
                    return [self._chunk({"content": text}, None)]
            return []
        if kind == "message_delta":
            self._add_usage(payload.get("usage"))
            delta = payload.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            return [self._chunk({}, finish_reason(stop))]
        if kind == "message_stop":
            self.ended = True
            closing = {**self._started(), "choices": [], "usage": usage(self._usage)}
            return [_sse(closing), b"data: [DONE]\n\n"]
        if kind == "error":
            raise _stream_error(payload.get("error"))
        return []  # ping, content_block_start and _stop, and what may come later

    def _add_usage(self, counts: Any) -> None:
        if isinstance(counts, dict):
            self._usage.update({k: v for k, v in counts.items() if v is not None})

    def _started(self) -> dict[str, Any]:
        if self._base is None:
            raise ProviderError(
                "bad_response", "the upstream stream did not start with message_start"
            )
        return self._base

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**self._started(), "choices": [choice]})


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + to_json(chunk) + b"\n\n"


def _stream_error(detail: Any) -> ProviderError:
    detail = detail if isinstance(detail, dict) else {}
    kind = detail.get("type") if isinstance(detail.get("type"), str) else "api_error"
    message = detail.get("message") if isinstance(detail.get("message"), str) else kind
    return ProviderError(
        STREAM_ERROR_KINDS.get(kind, "bad_response"),
        f"the upstream stream failed: {kind}: {message[:300]}",
    )
