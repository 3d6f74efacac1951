"""A provider that is not a model: deterministic replies from a function or a queue.

For tests and the offline demo. Its replies go through the same lifecycle as a real model's
(validation, repair, retries, recording), so a test can exercise every path without a network.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from smallops.providers.base import Params, Provider, ProviderError, Reply
from smallops.records import Usage


@dataclass(frozen=True)
class FakeRequest:
    """What a responder sees: the model asked for, the messages, the JSON schema if any."""

    model: str
    messages: list[dict[str, str]]
    schema: dict[str, Any] | None

    @property
    def user(self) -> str:
        """The last user message: usually the rendered input."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


@dataclass(frozen=True)
class FakeReply:
    """A scripted reply; `finish="length"` fakes truncation, `refusal=` a refusal."""

    text: str | None = None
    finish: str = "stop"
    refusal: str | None = None
    model: str | None = None


FakeAnswer = str | dict[str, Any] | BaseModel | FakeReply | ProviderError
Responder = Callable[[FakeRequest], FakeAnswer]


class FakeProvider(Provider):
    """Answers from `responder(request)`, or with a schema-valid example when none is given.

    A responder may return text, a dict or model (sent as JSON), a FakeReply, or raise or
    return a ProviderError to fake an outage (`ProviderError("rate_limited", ..., retry_after=1)`).
    """

    kind = "fake"

    def __init__(self, responder: Responder | None = None, *, name: str = "fake") -> None:
        self.name = name
        self.responder = responder or example_answer
        self.calls = 0

    @classmethod
    def queue(cls, answers: Iterable[FakeAnswer]) -> FakeProvider:
        """Answer with `answers` in order, one per request; an empty queue is a bad_request."""
        pending = deque(answers)
        lock = threading.Lock()

        def next_answer(_: FakeRequest) -> FakeAnswer:
            with lock:
                if not pending:
                    return ProviderError("bad_request", "the fake provider's queue is empty")
                return pending.popleft()

        return cls(next_answer)

    def prepare(self, model: str, output: type[BaseModel] | None, params: Params) -> dict[str, Any]:
        schema = output.model_json_schema() if output is not None else None
        return {"model": model, "schema": schema}

    def send(self, request: dict[str, Any], timeout: float) -> Reply:
        self.calls += 1
        answer = self.responder(
            FakeRequest(request["model"], request["messages"], request["schema"])
        )
        if isinstance(answer, ProviderError):
            raise answer
        return _reply(request, answer)

    async def asend(self, request: dict[str, Any], timeout: float) -> Reply:
        return self.send(request, timeout)


def _reply(request: dict[str, Any], answer: FakeAnswer) -> Reply:
    if not isinstance(answer, FakeReply):
        answer = FakeReply(text=_as_text(answer))
    served = answer.model or request["model"]
    body = {
        "model": served,
        "text": answer.text,
        "finish": answer.finish,
        "refusal": answer.refusal,
    }
    prompt_chars = sum(len(m["content"]) for m in request["messages"])
    return Reply(
        text=answer.text,
        finish="refusal" if answer.refusal else answer.finish,
        refusal=answer.refusal,
        model=served,
        fingerprint="fake",
        raw=json.dumps(body),
        usage=Usage(
            input_tokens=prompt_chars // 4 + 1, output_tokens=len(answer.text or "") // 4 + 1
        ),
    )


def _as_text(answer: str | dict[str, Any] | BaseModel | ProviderError) -> str:
    if isinstance(answer, str):
        return answer
    if isinstance(answer, BaseModel):
        return answer.model_dump_json()
    return json.dumps(answer)


def example_answer(request: FakeRequest) -> FakeAnswer:
    """A schema-valid example for structured output, an echo for free text."""
    if request.schema is None:
        return f"(fake reply to {len(request.user)} characters)"
    return json.dumps(example_for(request.schema, request.schema.get("$defs", {})))


def example_for(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """The simplest value that a JSON schema accepts (enums, objects, arrays, scalars)."""
    if "$ref" in schema:
        return example_for(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return example_for(options[0], defs)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: example_for(sub, defs) for name, sub in props.items()}
    if kind == "array":
        return [example_for(schema.get("items", {}), defs)] * max(1, schema.get("minItems", 1))
    if kind in ("integer", "number"):
        return max(1, schema.get("minimum", 1))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "example"
