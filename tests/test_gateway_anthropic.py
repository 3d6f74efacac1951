"""Routes to Anthropic models: the official OpenAI SDK against the gateway (a real uvicorn
server) in front of the Anthropic emulator, the request and answer translated both ways, and
what is not plain chat refused before anything is sent."""

from __future__ import annotations

import asyncio
import json
import secrets

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import create_engine

from smallops import Settings
from smallops.gateway.anthropic_wire import DEFAULT_MAX_TOKENS, StreamTranslator
from smallops.gateway.app import Gateway
from smallops.pricing import price_run
from smallops.providers.base import ProviderError
from smallops.records import Pricing, Usage
from smallops.storage.db import ensure_schema, normalise_url
from smallops.storage.prompt_parts import expand_runs
from test_gateway import Running

from emulators import ok, refusal, respond, status, truncated
from live_server import serving_app

MODEL = "claude-sonnet-4-6"
BUILTIN = "claude-haiku-4-5-20251001"
MESSAGES = [
    {"role": "system", "content": "You sort support tickets."},
    {"role": "user", "content": "Say hello to ann@example.com"},
]


def anthropic_toml(database_url: str, emulator) -> str:
    return (
        f'[smallops]\ndatabase_url = "{database_url}"\n'
        f'[providers.claude]\nkind = "anthropic"\nbase_url = "{emulator.anthropic_base_url}"\n'
        'api_key_env = "CLAUDE_KEY"\n'
        f'[providers.emu]\nkind = "openai"\nbase_url = "{emulator.openai_base_url}"\n'
        'api_key_env = "EMU_KEY"\n'
        f'[prices."claude:{MODEL}"]\ninput = 3.0\noutput = 15.0\ncached_input = 0.3\n'
        f'[gateway.routes.claude]\nmodel = "claude:{MODEL}"\n'
        f'[gateway.routes.once]\nmodel = "claude:{MODEL}"\nretries = 0\n'
        f'[gateway.routes.steady]\nmodel = "claude:{MODEL}"\nfallback = "emu:model-b"\n'
        "retries = 1\n"
        f'[gateway.routes.backup]\nmodel = "emu:model-a"\nfallback = "claude:{MODEL}"\n'
        f'[gateway.routes.builtin]\nmodel = "anthropic:{BUILTIN}"\n'
    )


def serve(tmp_path, emulator, monkeypatch, database_url=None, toml=None):
    """The gateway with the routes above, served; the upstream keys in the environment."""
    upstream_key = "sk-ant-upstream-" + secrets.token_hex(16)
    monkeypatch.setenv("CLAUDE_KEY", upstream_key)
    monkeypatch.setenv("ANTHROPIC_API_KEY", upstream_key)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.anthropic_base_url)
    monkeypatch.setenv("EMU_KEY", "sk-emu-" + secrets.token_hex(16))
    database_url = database_url or f"sqlite:///{tmp_path / 'log.db'}"
    (tmp_path / "smallops.toml").write_text(toml or anthropic_toml(database_url, emulator))
    settings = Settings.load(tmp_path)
    return settings, upstream_key


@pytest.fixture
def gateway(tmp_path, emulator, monkeypatch):
    settings, upstream_key = serve(tmp_path, emulator, monkeypatch)
    with serving_app(Gateway(settings)) as port:
        running = Running(settings, port, upstream_key)
        ensure_schema(running.engine)
        yield running
        running.engine.dispose()


def expanded(engine, run: dict) -> dict:
    """The run as sent: its JSON columns parsed, its prompt parts put back."""
    if engine.dialect.name == "sqlite":  # JSON as text; psycopg parses JSONB itself
        for name in ("messages", "attempts", "output"):
            if isinstance(run[name], str):
                run[name] = json.loads(run[name])
    with engine.connect() as connection:
        expand_runs(connection, [run])
    return run


def claude_direct(emulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=emulator.anthropic_base_url, api_key="sk-ant-direct", max_retries=0
    )


def test_a_whole_answer_is_the_emulators_message_as_a_completion_and_is_logged(gateway, emulator):
    """Sync SDK, not streamed: the text, model, finish reason and usage Anthropic gave; the
    system message in `system`, the parameters translated, the provider's key in x-api-key;
    one run with provider, model, usage and cost."""
    emulator.default = ok(cached_tokens=5)
    expected = claude_direct(emulator).messages.create(
        model=MODEL, max_tokens=100, messages=[MESSAGES[1]], system=MESSAGES[0]["content"]
    )
    emulator.clear()
    emulator.default = ok(cached_tokens=5, request_id="req_from_anthropic")
    key = gateway.key()
    raw = gateway.client(key).chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, max_tokens=100, temperature=0.2, top_p=0.9, stop="END"
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == expected.content[0].text
    assert completion.choices[0].message.role == "assistant"
    assert (completion.model, completion.object) == (expected.model, "chat.completion")
    assert completion.choices[0].finish_reason == "stop" and completion.id.startswith("msg_")
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (30, 15, 45)
    assert usage.prompt_tokens_details.cached_tokens == 5
    assert raw.headers["x-request-id"] == "req_from_anthropic"
    (sent,) = emulator.requests
    assert sent.path == "/v1/messages"
    assert sent.body == {
        "model": MODEL,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Say hello to ann@example.com"}],
        "system": "You sort support tickets.",
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
    }
    assert sent.headers["x-api-key"] == gateway.upstream_key
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers and key not in json.dumps(sent.headers)
    (run,) = gateway.runs(1)
    assert run["id"] == raw.headers["x-smallops-run-id"]
    assert (run["provider"], run["workflow"], run["status"]) == ("claude", "gateway:claude", "auto")
    assert (run["model_requested"], run["model_served"]) == (MODEL, MODEL)
    assert (run["input_tokens"], run["output_tokens"], run["cached_tokens"]) == (30, 15, 5)
    assert run["cost_usd"] == pytest.approx((25 * 3.0 + 5 * 0.3 + 15 * 15.0) / 1e6)
    expanded(gateway.engine, run)
    attempt = run["attempts"][0]
    assert attempt["request"]["system"] == "You sort support tickets."
    assert json.loads(attempt["response"])["type"] == "message"  # Anthropic's own body
    assert attempt["request_id"] == "req_from_anthropic"
    assert (
        "ann@example.com" in json.dumps(run["messages"])
        and expected.content[0].text in run["output"]
    )


def test_async_whole_answers_and_a_text_parts_list_translate_alike(gateway, emulator):
    emulator.default = truncated("cut sho")
    parts = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}],
        },
        {"role": "assistant", "content": "Earlier answer", "name": "bot", "refusal": None},
        {"role": "user", "content": "Again"},
    ]

    async def whole():
        client = gateway.aclient(gateway.key())
        return await client.chat.completions.create(
            model="claude", messages=parts, max_completion_tokens=7, user="u-42"
        )

    completion = asyncio.run(whole())
    assert completion.choices[0].message.content == "cut sho"
    assert completion.choices[0].finish_reason == "length"  # max_tokens
    body = emulator.requests[-1].body
    assert body["system"] == "Be brief." and body["max_tokens"] == 7
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}],
        },
        {"role": "assistant", "content": "Earlier answer"},
        {"role": "user", "content": "Again"},
    ]
    assert body["metadata"] == {"user_id": "u-42"}


def test_a_request_without_max_tokens_gets_the_documented_default(gateway, emulator):
    gateway.client(gateway.key()).chat.completions.create(model="claude", messages=MESSAGES)
    assert emulator.requests[-1].body["max_tokens"] == DEFAULT_MAX_TOKENS == 4096


def stream_text(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_streamed_answers_sync_and_async_carry_the_emulators_text_and_usage(gateway, emulator):
    """The chunks carry Anthropic's text and model and end the stream; the usage chunk only
    when the client asked for it; the run has the usage either way."""
    with claude_direct(emulator).messages.stream(
        model=MODEL, max_tokens=100, messages=[MESSAGES[1]]
    ) as direct:
        expected = direct.get_final_message()
    emulator.clear()
    key = gateway.key()
    chunks = list(
        gateway.client(key).chat.completions.create(model="claude", messages=MESSAGES, stream=True)
    )
    assert stream_text(chunks) == expected.content[0].text
    assert {c.model for c in chunks} == {expected.model}
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert emulator.requests[-1].body["stream"] is True
    assert "stream_options" not in emulator.requests[-1].body

    async def streamed():
        client = gateway.aclient(key)
        stream = await client.chat.completions.create(
            model="claude", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        return [chunk async for chunk in stream]

    asked = asyncio.run(streamed())
    assert stream_text(asked) == expected.content[0].text
    last = asked[-1]
    assert last.choices == [] and last.usage.prompt_tokens == expected.usage.input_tokens
    assert last.usage.completion_tokens == expected.usage.output_tokens == 15
    assert last.usage.total_tokens == 40
    runs = gateway.runs(2)
    assert [r["status"] for r in runs] == ["auto", "auto"]
    assert all((r["input_tokens"], r["output_tokens"]) == (25, 15) for r in runs)
    assert all(r["cost_usd"] == pytest.approx((25 * 3.0 + 15 * 15.0) / 1e6) for r in runs)
    assert runs[0]["output"] == json.dumps(expected.content[0].text)
    assert runs[0]["model_served"] == MODEL


def test_the_stream_ends_with_done_on_the_wire(gateway, emulator):
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers={"authorization": f"Bearer {gateway.key()}"},
        json={"model": "claude", "messages": MESSAGES, "stream": True},
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200 and lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_a_builtin_anthropic_route_is_priced_by_genai_prices(gateway, emulator):
    gateway.client(gateway.key()).chat.completions.create(model="builtin", messages=MESSAGES)
    assert emulator.requests[-1].body["model"] == BUILTIN
    (run,) = gateway.runs(1)
    assert (run["provider"], run["model_requested"]) == ("anthropic", BUILTIN)
    expected = price_run(Pricing(vendor="anthropic", override=None), BUILTIN, Usage(25, 15))[0]
    assert expected and run["cost_usd"] == pytest.approx(expected)


def test_a_429_is_waited_out_and_retried(gateway, emulator):
    emulator.script(status(429, retry_after=0.2), ok())
    raw = gateway.client(gateway.key()).chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content == "Hello from the emulator."
    assert len(emulator.requests) == 2
    (run,) = gateway.runs(1)
    assert run["attempt_count"] == 2 and run["status"] == "auto"
    first = json.loads(run["attempts"])[0]
    assert (first["error_type"], first["status_code"]) == ("rate_limited", 429)
    assert first["retry_in_s"] >= 0.2


def test_an_overloaded_anthropic_falls_back_to_an_openai_format_model(gateway, emulator):
    emulator.default = respond(
        lambda body, _: status(529, message="Overloaded") if body["model"] == MODEL else ok()
    )
    raw = gateway.client(gateway.key()).chat.completions.with_raw_response.create(
        model="steady", messages=MESSAGES
    )
    assert raw.parse().model == "model-b"
    assert [r.path for r in emulator.requests] == [
        "/v1/messages",
        "/v1/messages",
        "/v1/chat/completions",
    ]
    assert emulator.requests[-1].body["messages"] == MESSAGES  # as the client sent them
    primary, secondary = gateway.runs(2)
    assert (primary["status"], primary["error_type"], primary["attempt_count"]) == (
        "fallback_secondary",
        "server_error",
        2,
    )
    assert "Overloaded" in primary["error_message"]
    assert (secondary["origin"], secondary["provider"], secondary["model_served"]) == (
        "fallback",
        "emu",
        "model-b",
    )


@pytest.mark.parametrize(
    ("code", "error", "status_code", "kind", "sdk_error"),
    [
        (529, "overloaded_error", 503, "server_error", openai.InternalServerError),
        (500, "api_error", 500, "server_error", openai.InternalServerError),
        (400, "invalid_request_error", 400, "bad_request", openai.BadRequestError),
        (429, "rate_limit_error", 429, "rate_limited", openai.RateLimitError),
    ],
)
def test_anthropic_errors_come_back_in_openais_shape(
    gateway, emulator, code, error, status_code, kind, sdk_error
):
    emulator.default = status(code, message=f"anthropic says {code}")
    with pytest.raises(sdk_error, match=f"anthropic says {code}") as raised:
        gateway.client(gateway.key()).chat.completions.create(model="once", messages=MESSAGES)
    assert raised.value.status_code == status_code and raised.value.code == error
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert len(emulator.requests) == 1
    (run,) = gateway.runs(1)
    assert (run["status"], run["error_type"]) == ("failed", kind)


def test_a_refused_provider_key_is_a_502_not_the_clients_fault(gateway, emulator):
    emulator.default = status(401, message="invalid x-api-key")
    with pytest.raises(openai.APIStatusError) as raised:
        gateway.client(gateway.key(), max_retries=0).chat.completions.create(
            model="once", messages=MESSAGES
        )
    assert raised.value.status_code == 502 and raised.value.code == "upstream_auth_error"


def test_a_provider_key_that_cannot_be_had_is_the_gateways_503_not_a_bad_upstream(
    gateway, emulator, monkeypatch
):
    """Nothing was sent, so it is no upstream's fault: the run's error type is the code."""
    monkeypatch.delenv("CLAUDE_KEY")
    client = gateway.client(gateway.key(), max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="once", messages=MESSAGES, stream=stream)
        assert raised.value.status_code == 503 and raised.value.code == "secret_unavailable"
        assert "CLAUDE_KEY is not set" in raised.value.message
        assert raised.value.response.headers["x-should-retry"] == "false"
    assert emulator.requests == []
    assert {(r["status"], r["error_type"]) for r in gateway.runs(2)} == {
        ("failed", "secret_unavailable")
    }


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}


@pytest.mark.parametrize(
    ("route", "options", "param"),
    [
        ("claude", {"tools": [TOOL]}, "tools"),
        ("claude", {"tool_choice": "auto"}, "tool_choice"),
        ("claude", {"functions": [TOOL["function"]]}, "functions"),
        ("claude", {"response_format": SCHEMA}, "response_format"),
        ("claude", {"response_format": {"type": "json_object"}}, "response_format"),
        ("claude", {"n": 2}, "n"),
        ("claude", {"logprobs": True}, "logprobs"),
        ("claude", {"frequency_penalty": 0.5}, "frequency_penalty"),
        ("claude", {"extra_body": {"reasoning": {"effort": "high"}}}, "reasoning"),
        (
            "claude",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, IMAGE]}]},
            "messages[0].content[1].type",
        ),
        (
            "claude",
            {"messages": [{"role": "tool", "tool_call_id": "c1", "content": "42"}]},
            "messages[0].role",
        ),
        (
            "claude",
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
                ]
            },
            "messages[1].tool_calls",
        ),
        ("backup", {"tools": [TOOL]}, "tools"),  # an Anthropic fallback holds its route to it
    ],
)
def test_what_is_not_plain_chat_is_a_400_naming_it_and_nothing_is_sent(
    gateway, emulator, route, options, param
):
    arguments = {"model": route, "messages": MESSAGES, **options}
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client(gateway.key()).chat.completions.create(**arguments)
    assert refused.value.code == "unsupported_parameter" and refused.value.param == param
    assert "Anthropic model" in refused.value.message and "plain chat" in refused.value.message
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert emulator.requests == []


def test_neutral_values_of_unsupported_fields_are_accepted(gateway, emulator):
    client = gateway.client(gateway.key())
    reply = client.chat.completions.create(
        model="claude",
        messages=MESSAGES,
        n=1,
        logprobs=False,
        seed=7,
        presence_penalty=0,
        response_format={"type": "text"},
        tools=[],
        store=False,
    )
    assert reply.choices[0].message.content == "Hello from the emulator."
    sent = emulator.requests[-1].body
    assert not {"n", "logprobs", "seed", "presence_penalty", "response_format", "tools"} & set(sent)
    assert client.chat.completions.create(model="backup", messages=MESSAGES).model == "model-a"


def test_the_anthropic_sdk_pointed_at_the_gateway_gets_a_clear_404(gateway, emulator):
    client = anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{gateway.port}", api_key="x", max_retries=0
    )
    with pytest.raises(anthropic.NotFoundError) as refused:
        client.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    message = str(refused.value)
    assert "Messages API" in message and "not supported" in message
    assert "/v1/chat/completions" in message and "OpenAI SDK" in message
    assert emulator.requests == []


HOSTILE = "nul\x00byte \u202eevil\u202c \U0001f9ea e\u0301 \ufeff\u2028\u2029 \ufffe end"


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_hostile_content_is_sent_and_logged_as_it_came(
    tmp_path, emulator, monkeypatch, database, request
):
    """NUL bytes, bidi controls, emoji, combining marks, BOM and line separators, and a 2 MB
    message: translated as they came, answered, and logged (JSONB on Postgres refuses \\u0000
    unless it is stored with care)."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    if database == "postgres":
        url = request.getfixturevalue("postgres_url")
    settings, upstream_key = serve(tmp_path, emulator, monkeypatch, url)
    emulator.default = ok(HOSTILE)
    huge = "x" * 2_000_000
    messages = [
        {"role": "system", "content": HOSTILE},
        {"role": "user", "content": HOSTILE},
        {"role": "assistant", "content": huge},
        {"role": "user", "content": [{"type": "text", "text": HOSTILE}]},
    ]
    with serving_app(Gateway(settings)) as port:
        running = Running(settings, port, upstream_key)
        running.engine.dispose()
        running.engine = create_engine(normalise_url(settings.database_url, tmp_path))
        ensure_schema(running.engine)
        client = running.client(running.key())
        reply = client.chat.completions.create(model="claude", messages=messages)
        assert reply.choices[0].message.content == HOSTILE
        chunks = list(
            client.chat.completions.create(model="claude", messages=messages, stream=True)
        )
        assert stream_text(chunks) == HOSTILE
        sent = emulator.requests[-1].body
        assert sent["system"] == HOSTILE and sent["messages"][0]["content"] == HOSTILE
        assert sent["messages"][1]["content"] == huge
        runs = [expanded(running.engine, run) for run in running.runs(2)]
        running.engine.dispose()
    assert [r["status"] for r in runs] == ["auto", "auto"]
    stored = HOSTILE.replace("\x00", "\ufffd")  # as the log stores a NUL, on either engine
    for run in runs:
        assert "nul_replaced" in str(run["flags"])
        assert run["messages"][0]["content"] == stored and run["output"] == stored
        assert len(run["messages"][2]["content"]) == 2_000_000


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": ["user"], "content": "x"}], "messages[0].role"),
        ([{"content": "x"}], "messages[0].role"),
        ([{"rol": "user", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": 42}], "messages[0].content"),
        ([{"role": "user", "content": ["x"]}], "messages[0].content[0].type"),
        (["just text"], "messages[0]"),
        ([{"role": "system", "content": "only a system message"}], "messages"),
    ],
)
def test_malformed_messages_are_a_400_not_a_failure(gateway, emulator, messages, param):
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"authorization": f"Bearer {gateway.key()}"},
        json={"model": "claude", "messages": messages},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert "NoneType" not in response.json()["error"]["message"]  # a missing role says so
    assert emulator.requests == []


def test_a_client_that_leaves_mid_stream_cancels_the_anthropic_request(gateway, emulator):
    emulator.default = ok("word " * 200)
    emulator.stream_delay = 0.05
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers={"authorization": f"Bearer {gateway.key()}"},
        json={"model": "claude", "messages": MESSAGES, "stream": True},
    ) as response:
        next(line for line in response.iter_lines() if "word" in line)
    (run,) = gateway.runs(1)
    assert (run["status"], run["error_type"]) == ("failed", "cancelled")
    assert "word" in run["output"]
    import time

    deadline = time.monotonic() + 5
    while emulator.streams_cut == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (emulator.streams_cut, emulator.streams_finished) == (1, 0)


def test_a_rotated_key_costs_one_401_on_an_anthropic_route(tmp_path, emulator, monkeypatch):
    from keyscript import KeyScript, provider_accepting

    k1, k2 = "sk-ant-one-" + secrets.token_hex(16), "sk-ant-two-" + secrets.token_hex(16)
    script = KeyScript(tmp_path / "store", k1)
    current, refused = [k1], []
    emulator.default = respond(provider_accepting(lambda: current[0], refused))
    url = f"sqlite:///{tmp_path / 'log.db'}"
    toml = anthropic_toml(url, emulator).replace(
        'api_key_env = "CLAUDE_KEY"\n', f"api_key = {json.dumps(script.reference)}\n"
    )
    settings, _ = serve(tmp_path, emulator, monkeypatch, toml=toml)
    with serving_app(Gateway(settings)) as port:
        running = Running(settings, port, k1)
        ensure_schema(running.engine)
        client = running.client(running.key())
        client.chat.completions.create(model="claude", messages=MESSAGES)
        script.set(key=k2)
        current[0] = k2
        answer = client.chat.completions.with_raw_response.create(model="claude", messages=MESSAGES)
        assert answer.http_response.status_code == 200
        assert refused == [k1] and script.count == 2
        runs = running.runs(2)
        running.engine.dispose()
    assert {run["status"] for run in runs} == {"auto"}
    assert not [run for run in runs if k1 in json.dumps(run, default=str)]


# -- the stream translator on its own --------------------------------------------------------

EVENTS = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
    b'"model":"m","usage":{"input_tokens":3,"cache_read_input_tokens":2,"output_tokens":1}}}\n\n'
    b'event: ping\ndata: {"type":"ping"}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"H\xc3\xa9"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},'
    b'"usage":{"output_tokens":9}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def translated(pieces: list[bytes]) -> list[dict | str]:
    translator = StreamTranslator(created=1)
    out = b"".join(translator.feed(piece) for piece in pieces)
    assert translator.ended
    events = [e.removeprefix(b"data: ") for e in out.split(b"\n\n") if e]
    return [e.decode() if e == b"[DONE]" else json.loads(e) for e in events]


def test_the_stream_translator_gives_the_same_chunks_however_the_bytes_are_cut():
    whole = translated([EVENTS])
    assert translated([EVENTS[i : i + 1] for i in range(len(EVENTS))]) == whole
    assert translated([EVENTS.replace(b"\n", b"\r\n")]) == whole
    role, text, finish, usage, done = whole
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text["choices"][0]["delta"] == {"content": "Hé"} and text["id"] == "msg_1"
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 9,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    assert done == "[DONE]"


def test_an_error_event_mid_stream_is_a_provider_error():
    translator = StreamTranslator(created=1)
    translator.feed(EVENTS.split(b"event: ping")[0])
    error = (
        b'event: error\ndata: {"type":"error",'
        b'"error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    text = EVENTS.split(b"event: ping\n", 1)[1].split(b"event: message_delta")[0]
    out = translator.feed(text + error + EVENTS)  # the text before the error is handed on
    assert b"H\xc3\xa9" in out and b"[DONE]" not in out and not translator.ended
    failure = translator.failure
    assert isinstance(failure, ProviderError) and failure.kind == "server_error"
    assert "overloaded_error: Overloaded" in failure.message
    assert json.loads(translator.counted().removeprefix(b"data: "))["usage"]["total_tokens"] == 6
    unstarted = StreamTranslator(created=1)
    assert unstarted.feed(EVENTS.split(b"event: ping\n", 1)[1]) == b""
    assert unstarted.failure is not None and "message_start" in unstarted.failure.message
    assert unstarted.counted() == b""


def test_a_refusal_finishes_as_content_filter_whole_and_streamed(gateway, emulator):
    emulator.default = refusal("I won't sort that.")
    client = gateway.client(gateway.key())
    whole = client.chat.completions.create(model="claude", messages=MESSAGES)
    assert whole.choices[0].finish_reason == "content_filter"
    assert whole.choices[0].message.content == "I won't sort that."
    chunks = list(client.chat.completions.create(model="claude", messages=MESSAGES, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"


def test_through_httpx_an_anthropic_route_answers_streams_and_retries_alike(
    tmp_path, emulator, monkeypatch
):
    """The path taken when a proxy stands between the gateway and Anthropic."""
    import smallops.gateway.upstream

    monkeypatch.setattr(smallops.gateway.upstream, "uses_proxy", lambda url: True)
    settings, upstream_key = serve(tmp_path, emulator, monkeypatch)
    app = Gateway(settings)
    with serving_app(app) as port:
        running = Running(settings, port, upstream_key)
        ensure_schema(running.engine)
        client = running.client(running.key())
        emulator.script(status(529), ok())
        whole = client.chat.completions.create(model="claude", messages=MESSAGES)
        assert whole.usage.total_tokens == 40 and len(emulator.requests) == 2
        chunks = list(
            client.chat.completions.create(model="claude", messages=MESSAGES, stream=True)
        )
        assert stream_text(chunks) == "Hello from the emulator."
        runs = running.runs(2)
        running.engine.dispose()
    assert all(upstream.proxied for upstream in app._upstreams.values())
    assert [(r["status"], r["attempt_count"], r["output_tokens"]) for r in runs] == [
        ("auto", 2, 15),
        ("auto", 1, 15),
    ]


def test_a_lone_surrogate_is_a_400_before_translation(gateway, emulator):
    """JSON that escapes half a UTF-16 pair cannot be text: refused as invalid JSON."""
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"authorization": f"Bearer {gateway.key()}", "content-type": "application/json"},
        content=b'{"model": "claude", "messages": [{"role": "user", "content": "half \\ud800"}]}',
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert emulator.requests == []


# -- streams that end before message_stop ------------------------------------------------------


def event(name: str, **data) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


STARTED = event(
    "message_start",
    message={"id": "msg_1", "model": "m-1", "usage": {"input_tokens": 1000, "output_tokens": 1}},
)
HELLO = event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hello"})
COUNTED = event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 77})
OVERLOADED = event("error", error={"type": "overloaded_error", "message": "Overloaded"})


@pytest.mark.parametrize(
    ("pieces", "kind", "output_tokens"),
    [
        ((STARTED, HELLO, COUNTED), "bad_response", 77),  # no message_stop
        ((STARTED, HELLO, OVERLOADED), "server_error", 1),  # an error event
        ((STARTED, HELLO + OVERLOADED), "server_error", 1),  # the text and the error in one read
        ((STARTED, HELLO, 2.0, COUNTED), "timeout", 1),  # a stall past the route's timeout
    ],
    ids=["no-stop", "error", "one-read", "stall"],
)
def test_a_stream_cut_short_keeps_anthropics_counts_and_ends_with_an_error(
    tmp_path, monkeypatch, pieces, kind, output_tokens
):
    """The input tokens Anthropic counted at message_start (and the output it counted since)
    are the run's usage, not an estimate; the text that came is the client's and the log's,
    and the client's SDK raises the gateway's error."""
    from test_gateway import ScriptedStream, scripted_gateway

    stack, running = scripted_gateway(tmp_path, monkeypatch, ScriptedStream(*pieces), "anthropic")
    with stack:
        client = running.client(running.key(), max_retries=0)
        stream = client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        got = []
        with pytest.raises(openai.APIError):
            for piece in stream:
                got.append(piece)
        (run,) = running.runs(1)
    assert stream_text(got) == "Hello"
    assert (run["status"], run["error_type"], run["output"]) == ("failed", kind, '"Hello"')
    assert (run["input_tokens"], run["output_tokens"]) == (1000, output_tokens)
