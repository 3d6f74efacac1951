"""The model-API emulator, driven by the real `openai` and `anthropic` SDK clients."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import anthropic
import openai
import pytest
from anthropic.types import Message, TextBlock
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, Field

from emulators import (
    ModelServer,
    delay,
    disconnect,
    malformed,
    ok,
    refusal,
    status,
    truncated,
)

MESSAGES: list[Any] = [{"role": "user", "content": "Classify: my invoice is wrong"}]
IsoDate = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]


class Contact(BaseModel):
    name: str
    age: int


class Ticket(BaseModel):
    category: Literal["billing", "support", "other"]
    due: IsoDate
    opened: datetime.date
    contact: Contact
    watchers: list[Contact]
    priority: int | None
    score: float
    urgent: bool


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer() as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(server: ModelServer) -> Iterator[None]:
    server.clear()
    server.default = ok()
    yield
    server.clear()
    server.default = ok()


@pytest.fixture
def oai(server: ModelServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=server.openai_base_url, api_key="sk-test", max_retries=0, timeout=5
    )
    yield client
    client.close()


@pytest.fixture
def claude(server: ModelServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        base_url=server.anthropic_base_url, api_key="sk-ant-test", max_retries=0, timeout=5
    )
    yield client
    client.close()


def ask_openai(client: openai.OpenAI, **kwargs: Any) -> ChatCompletion:
    """One non-streaming chat completion for `MESSAGES`."""
    reply: ChatCompletion = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, **kwargs
    )
    return reply


def ask_claude(client: anthropic.Anthropic, **kwargs: Any) -> Message:
    """One non-streaming Messages call for `MESSAGES`."""
    reply: Message = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES, **kwargs
    )
    return reply


def credential(headers: dict[str, str]) -> str:
    return headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")


def claude_text(message: Message) -> str:
    block = message.content[0]
    assert isinstance(block, TextBlock)
    return block.text


# --- successes -----------------------------------------------------------------------------


def test_ok_looks_like_a_real_openai_chat_completion(oai: openai.OpenAI) -> None:
    reply = ask_openai(oai)
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.created > 0
    assert reply.model == "gpt-4o"
    assert reply.system_fingerprint == "fp_emulator"
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello from the emulator."
    assert choice.message.refusal is None
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (25, 15)
    assert reply.usage.total_tokens == 40
    assert reply._request_id is not None


def test_ok_looks_like_a_real_anthropic_message(claude: anthropic.Anthropic) -> None:
    reply = ask_claude(claude)
    assert reply.id.startswith("msg_")
    assert reply.type == "message"
    assert reply.role == "assistant"
    assert reply.model == "claude-sonnet-4-6"
    assert reply.stop_reason == "end_turn"
    assert [(b.type, getattr(b, "text", None)) for b in reply.content] == [
        ("text", "Hello from the emulator.")
    ]
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (25, 15)
    assert reply.usage.cache_creation_input_tokens == 0
    assert reply.usage.cache_read_input_tokens == 0
    assert reply._request_id is not None


def test_ok_reports_the_scripted_usage_and_fingerprint(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(
        ok(
            input_tokens=1200,
            output_tokens=80,
            cached_tokens=1000,
            reasoning_tokens=30,
            fingerprint="fp_other",
        ),
        ok(input_tokens=1200, output_tokens=80, cached_tokens=1000),
    )
    reply = ask_openai(oai)
    assert reply.system_fingerprint == "fp_other"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1200, 80)
    assert reply.usage.total_tokens == 1280
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 1000
    assert reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 30
    message = ask_claude(claude)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (1200, 80)
    assert message.usage.cache_read_input_tokens == 1000


def test_ok_serves_a_different_model_than_requested(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(ok(model="gpt-4o-2024-11-20"), ok(model="claude-sonnet-4-6-20260217"))
    assert ask_openai(oai).model == "gpt-4o-2024-11-20"
    assert ask_claude(claude).model == "claude-sonnet-4-6-20260217"
    assert [r.body["model"] for r in server.requests] == ["gpt-4o", "claude-sonnet-4-6"]


def test_ok_sends_given_content_verbatim_or_as_json(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(ok({"category": "billing"}), ok("not json at all"))
    assert json.loads(ask_openai(oai).choices[0].message.content or "") == {"category": "billing"}
    assert claude_text(ask_claude(claude)) == "not json at all"


def test_ok_fills_an_openai_json_schema_via_sdk_parse(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.parse(model="gpt-4o", messages=MESSAGES, response_format=Ticket)
    parsed = reply.choices[0].message.parsed
    assert parsed is not None
    assert parsed.category == "billing"
    assert parsed.due == "2026-01-15"
    assert parsed.opened == datetime.date(2026, 1, 15)
    assert parsed.watchers == [Contact(name="example", age=1)]


def test_ok_fills_an_openai_raw_response_format_schema(oai: openai.OpenAI) -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "ticket", "strict": True, "schema": Ticket.model_json_schema()},
    }
    reply = ask_openai(oai, response_format=fmt)
    Ticket.model_validate_json(reply.choices[0].message.content or "")


def test_ok_fills_an_anthropic_output_config_schema(claude: anthropic.Anthropic) -> None:
    fmt = {"type": "json_schema", "schema": Ticket.model_json_schema()}
    reply = ask_claude(claude, output_config={"format": fmt})
    ticket = Ticket.model_validate_json(claude_text(reply))
    assert ticket.priority == 1


def test_ok_fills_an_anthropic_schema_via_sdk_parse(claude: anthropic.Anthropic) -> None:
    # The SDK moves `pattern` into the field description; the emulator must still comply.
    reply = claude.messages.parse(
        model="claude-sonnet-4-6",
        max_tokens=100,
        messages=MESSAGES,
        output_format=Ticket,
    )
    assert isinstance(reply.parsed_output, Ticket)
    assert reply.parsed_output.due == "2026-01-15"


def test_ok_answers_openai_json_object_mode_with_json(oai: openai.OpenAI) -> None:
    reply = ask_openai(oai, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


# --- refusals and truncation ---------------------------------------------------------------


def test_refusal_is_a_refusal_to_both_sdks(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(refusal("Not allowed."), refusal("Not allowed."))
    choice = ask_openai(oai).choices[0]
    assert (choice.message.content, choice.message.refusal) == (None, "Not allowed.")
    assert choice.finish_reason == "stop"
    message = ask_claude(claude)
    assert message.stop_reason == "refusal"
    assert claude_text(message) == "Not allowed."
    assert message.stop_details is not None
    assert message.stop_details.type == "refusal"
    assert message.stop_details.explanation == "Not allowed."


def test_truncated_reports_the_token_limit_stop(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(truncated(), truncated("cut"))
    choice = ask_openai(oai).choices[0]
    assert (choice.finish_reason, choice.message.content) == ("length", '{"category": "supp')
    message = ask_claude(claude)
    assert (message.stop_reason, claude_text(message)) == ("max_tokens", "cut")


# --- HTTP errors ---------------------------------------------------------------------------


def test_429_raises_rate_limit_error_with_retry_after_header(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(status(429, retry_after=7), status(429, retry_after=1.5, message="slow down"))
    with pytest.raises(openai.RateLimitError) as oai_error:
        ask_openai(oai)
    assert oai_error.value.response.headers["retry-after"] == "7"
    assert oai_error.value.response.json()["error"] == {
        "message": "injected failure",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    with pytest.raises(anthropic.RateLimitError) as claude_error:
        ask_claude(claude)
    assert claude_error.value.response.headers["retry-after"] == "1.5"
    assert claude_error.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


def test_5xx_raises_internal_server_error(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(status(500), status(500), status(529))
    with pytest.raises(openai.InternalServerError) as oai_error:
        ask_openai(oai)
    assert oai_error.value.response.json()["error"]["type"] == "server_error"
    assert "retry-after" not in oai_error.value.response.headers
    with pytest.raises(anthropic.InternalServerError) as claude_error:
        ask_claude(claude)
    assert claude_error.value.response.json()["error"]["type"] == "api_error"
    with pytest.raises(anthropic.OverloadedError):
        ask_claude(claude)


@pytest.mark.parametrize(
    ("code", "openai_error", "anthropic_error"),
    [
        (400, openai.BadRequestError, anthropic.BadRequestError),
        (401, openai.AuthenticationError, anthropic.AuthenticationError),
        (404, openai.NotFoundError, anthropic.NotFoundError),
        (503, openai.InternalServerError, anthropic.InternalServerError),
    ],
)
def test_status_codes_map_to_the_sdk_exception_classes(
    server: ModelServer,
    oai: openai.OpenAI,
    claude: anthropic.Anthropic,
    code: int,
    openai_error: type[Exception],
    anthropic_error: type[Exception],
) -> None:
    server.script(status(code), status(code))
    with pytest.raises(openai_error):
        ask_openai(oai)
    with pytest.raises(anthropic_error):
        ask_claude(claude)


# --- transport-level failures --------------------------------------------------------------


def test_delay_beyond_client_timeout_raises_api_timeout_error(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(delay(3), delay(3))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask_openai(oai.with_options(timeout=0.3))
    with pytest.raises(anthropic.APITimeoutError):
        ask_claude(claude.with_options(timeout=0.3))
    assert time.monotonic() - started < 2
    assert ask_openai(oai).choices[0].finish_reason == "stop"  # the server is not stuck


def test_delay_then_answers_with_the_given_behaviour(
    server: ModelServer, oai: openai.OpenAI
) -> None:
    server.script(delay(0.05), delay(0.05, status(503)))
    assert ask_openai(oai).choices[0].message.content == "Hello from the emulator."
    with pytest.raises(openai.InternalServerError):
        ask_openai(oai)


def test_delay_does_not_block_concurrent_requests(server: ModelServer, oai: openai.OpenAI) -> None:
    server.script(delay(0.8, ok("slow")))
    slow: list[str | None] = []
    worker = threading.Thread(
        target=lambda: slow.append(ask_openai(oai).choices[0].message.content)
    )
    worker.start()
    while not server.requests:
        time.sleep(0.005)
    started = time.monotonic()
    assert ask_openai(oai).choices[0].message.content == "Hello from the emulator."
    assert time.monotonic() - started < 0.5
    assert not slow
    worker.join(timeout=5)
    assert slow == ["slow"]


def test_malformed_body_breaks_sdk_parsing(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(malformed(), malformed(), malformed())
    # Neither SDK wraps this: the JSON decoder's ValueError escapes `create` as is.
    with pytest.raises(ValueError, match="Expecting value"):
        ask_openai(oai)
    with pytest.raises(ValueError, match="Expecting value"):
        ask_claude(claude)
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        json.loads(raw.text)


def test_disconnect_raises_api_connection_error_not_timeout(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(disconnect(), disconnect())
    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError) as oai_error:
        ask_openai(oai)
    assert not isinstance(oai_error.value, openai.APITimeoutError)
    with pytest.raises(anthropic.APIConnectionError) as claude_error:
        ask_claude(claude)
    assert not isinstance(claude_error.value, anthropic.APITimeoutError)
    assert time.monotonic() - started < 1
    assert ask_claude(claude).stop_reason == "end_turn"  # later requests are served normally


# --- scripting and recording ---------------------------------------------------------------


def test_requests_record_path_body_and_auth_headers(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    ask_openai(oai, temperature=0)
    ask_claude(claude, system="Be brief.")
    first, second = server.requests
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.body == {"model": "gpt-4o", "messages": MESSAGES, "temperature": 0}
    assert second.path == "/v1/messages"
    # anthropic 2.x sends `api_key` as a bearer token; older versions used `x-api-key`.
    assert credential(second.headers) == "sk-ant-test"
    assert "anthropic-version" in second.headers
    assert second.body == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "messages": MESSAGES,
        "system": "Be brief.",
    }
    assert all(key == key.lower() for r in server.requests for key in r.headers)


def test_requests_record_an_explicit_x_api_key_header(server: ModelServer) -> None:
    client = anthropic.Anthropic(
        base_url=server.anthropic_base_url,
        api_key=None,
        auth_token=None,
        max_retries=0,
        default_headers={"X-Api-Key": "sk-ant-header"},
    )
    with client:
        ask_claude(client)
    assert server.requests[0].headers["x-api-key"] == "sk-ant-header"


def test_script_is_consumed_in_order_across_endpoints_then_default(
    server: ModelServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    server.script(ok("one"), ok("two"))
    server.script(status(500))
    assert ask_openai(oai).choices[0].message.content == "one"
    assert claude_text(ask_claude(claude)) == "two"
    with pytest.raises(openai.InternalServerError):
        ask_openai(oai)
    assert ask_openai(oai).choices[0].message.content == "Hello from the emulator."
    server.default = refusal()
    assert ask_claude(claude).stop_reason == "refusal"
    assert ask_claude(claude).stop_reason == "refusal"


def test_clear_forgets_requests_and_pending_script(server: ModelServer, oai: openai.OpenAI) -> None:
    server.script(status(500))
    server.clear()
    ask_openai(oai)
    assert len(server.requests) == 1
    server.clear()
    assert server.requests == []


def test_server_starts_and_stops_quickly_on_a_free_port() -> None:
    started = time.monotonic()
    with ModelServer() as other:
        assert time.monotonic() - started < 1
        assert other.port > 0
        assert other.anthropic_base_url == f"http://127.0.0.1:{other.port}"
        assert other.openai_base_url == f"{other.anthropic_base_url}/v1"
        client = openai.OpenAI(base_url=other.openai_base_url, api_key="sk-test", max_retries=0)
        ask_openai(client)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 1
    with pytest.raises(openai.APIConnectionError):
        ask_openai(client)
    client.close()
