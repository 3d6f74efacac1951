"""A third provider: the official OpenAI SDK, sync and async, streamed and not, against the
gateway in front of the Mistral emulator (configured as a team would: kind "openai" with
Mistral's base URL), compared with the same SDK calling the emulator directly."""

from __future__ import annotations

import asyncio
import json
import secrets

import openai
import pytest

from smallops import Settings
from smallops.gateway.app import Gateway
from smallops.storage.db import ensure_schema
from test_gateway import Running
from test_gateway_anthropic import expanded

from emulator_mistral import MistralServer
from emulators import ok, status
from live_server import serving_app

MODEL = "mistral-small-2506"
MESSAGES = [{"role": "user", "content": "Say hello to ann@example.com"}]


@pytest.fixture(scope="module")
def _mistral():
    with MistralServer() as server:
        yield server


@pytest.fixture
def mistral(_mistral):
    _mistral.clear()
    _mistral.default = ok()
    return _mistral


def mistral_toml(tmp_path, mistral) -> str:
    return (
        f'[smallops]\ndatabase_url = "sqlite:///{tmp_path / "log.db"}"\n'
        f'[providers.mistral]\nkind = "openai"\nbase_url = "{mistral.base_url}"\n'
        'api_key_env = "MISTRAL_API_KEY"\n'
        f'[prices."mistral:{MODEL}"]\ninput = 0.1\noutput = 0.3\n'
        f'[prices."mistral:mistral-large-2411"]\ninput = 100.0\noutput = 100.0\n'
        f'[gateway.routes.le-chat]\nmodel = "mistral:{MODEL}"\n'
        f'[gateway.routes.once]\nmodel = "mistral:{MODEL}"\nretries = 0\n'
        f'[gateway.routes.large]\nmodel = "mistral:mistral-large-2411"\ndaily_usd = 0.01\n'
    )


@pytest.fixture
def gateway(tmp_path, mistral, monkeypatch):
    upstream_key = "sk-mistral-" + secrets.token_hex(16)
    monkeypatch.setenv("MISTRAL_API_KEY", upstream_key)
    (tmp_path / "smallops.toml").write_text(mistral_toml(tmp_path, mistral))
    settings = Settings.load(tmp_path)
    with serving_app(Gateway(settings)) as port:
        running = Running(settings, port, upstream_key)
        ensure_schema(running.engine)
        yield running
        running.engine.dispose()


def without_ids(completion) -> dict:
    dumped = completion.model_dump()
    dumped.pop("id"), dumped.pop("created")
    return dumped


def direct(mistral) -> openai.OpenAI:
    return openai.OpenAI(base_url=mistral.base_url, api_key="sk-direct", max_retries=0)


def adirect(mistral) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=mistral.base_url, api_key="sk-direct", max_retries=0)


def test_sync_whole_completion_is_mistrals_own_and_is_logged(gateway, mistral):
    expected = direct(mistral).chat.completions.create(model=MODEL, messages=MESSAGES)
    mistral.clear()
    mistral.default = ok(request_id="corr-whole")
    key = gateway.key()
    raw = gateway.client(key).chat.completions.with_raw_response.create(
        model="le-chat", messages=MESSAGES
    )
    completion = raw.parse()
    assert without_ids(completion) == without_ids(expected)
    assert len(completion.id) == 32 and completion.system_fingerprint is None
    assert completion.usage.model_extra == {"prompt_audio_seconds": None}
    assert raw.headers["mistral-correlation-id"] == "corr-whole"  # passed on, under its name
    assert "x-request-id" not in raw.headers and "x-kong-request-id" not in raw.headers
    (sent,) = mistral.requests
    assert sent.body == {"model": MODEL, "messages": MESSAGES}
    assert sent.headers["authorization"] == f"Bearer {gateway.upstream_key}"
    (run,) = gateway.runs(1)
    assert (run["provider"], run["workflow"], run["status"]) == (
        "mistral",
        "gateway:le-chat",
        "auto",
    )
    assert (run["model_served"], run["system_fingerprint"]) == (MODEL, None)
    assert (run["input_tokens"], run["output_tokens"]) == (25, 15)
    assert run["cost_usd"] == pytest.approx((25 * 0.1 + 15 * 0.3) / 1e6)
    assert json.loads(run["attempts"])[0]["request_id"] == "corr-whole"


def test_async_whole_completion_is_mistrals_own(gateway, mistral):
    async def create(client, model):
        return await client.chat.completions.create(model=model, messages=MESSAGES)

    expected = asyncio.run(create(adirect(mistral), MODEL))
    through = asyncio.run(create(gateway.aclient(gateway.key()), "le-chat"))
    assert without_ids(through) == without_ids(expected)


def stream_sync(client, model, **options) -> list:
    return list(
        client.chat.completions.create(model=model, messages=MESSAGES, stream=True, **options)
    )


async def stream_async(client, model, **options) -> list:
    stream = await client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, **options
    )
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_streamed_chunks_are_mistrals_own_with_its_usage_in_the_last(gateway, mistral, flavour):
    """Mistral refuses `stream_options` (422): the gateway, which asks for usage, sends again
    without it once, and from then on not at all; Mistral's last chunk carries the usage with
    the finish reason, so the client gets it as it would directly, and the run is priced."""
    key = gateway.key()

    def chunks(client, model, **options) -> list:
        if flavour == "sync":
            return stream_sync(client(), model, **options)
        return asyncio.run(stream_async(client(), model, **options))  # a client per loop

    sync = flavour == "sync"
    direct_client = (lambda: direct(mistral)) if sync else (lambda: adirect(mistral))
    through_client = (lambda: gateway.client(key)) if sync else (lambda: gateway.aclient(key))
    expected = chunks(direct_client, MODEL)
    mistral.clear()
    through = chunks(through_client, "le-chat")
    assert [without_ids(c) for c in through] == [without_ids(c) for c in expected]
    assert through[-1].usage.prompt_tokens == 25 and through[-1].choices[0].finish_reason == "stop"
    assert ["stream_options" in r.body for r in mistral.requests] == [True, False]
    again = chunks(through_client, "le-chat")
    assert [without_ids(c) for c in again] == [without_ids(c) for c in expected]
    assert len(mistral.requests) == 3 and "stream_options" not in mistral.requests[2].body
    runs = gateway.runs(2)
    assert [(r["status"], r["attempt_count"]) for r in runs] == [("auto", 1), ("auto", 1)]
    assert all((r["input_tokens"], r["output_tokens"]) == (25, 15) for r in runs)
    assert runs[0]["output"] == '"Hello from the emulator."'
    for run in runs:  # the log has the request as it was sent, the last time
        assert "stream_options" not in expanded(gateway.engine, run)["attempts"][0]["request"]


def test_a_streamed_answer_passes_on_and_records_the_request_id(gateway, mistral):
    mistral.default = ok(request_id="corr-stream")
    client = gateway.client(gateway.key())
    with client.chat.completions.with_streaming_response.create(
        model="le-chat", messages=MESSAGES, stream=True
    ) as response:
        assert response.headers["mistral-correlation-id"] == "corr-stream"
        assert len(list(response.parse())) == 6
    (run,) = gateway.runs(1)
    assert json.loads(run["attempts"])[0]["request_id"] == "corr-stream"


def test_a_client_asking_for_usage_gets_mistrals_own_usage(gateway, mistral):
    """Directly, `stream_options` is Mistral's 422; through the gateway it is left out, and
    the usage the client asked for is in the last chunk, where Mistral puts it."""
    with pytest.raises(openai.UnprocessableEntityError):
        stream_sync(direct(mistral), MODEL, stream_options={"include_usage": True})
    through = stream_sync(
        gateway.client(gateway.key()), "le-chat", stream_options={"include_usage": True}
    )
    assert through[-1].usage.total_tokens == 40
    assert "".join(c.choices[0].delta.content or "" for c in through) == "Hello from the emulator."


def test_mistrals_errors_come_back_in_openais_shape(gateway, mistral):
    """Mistral's flat `{"object": "error", ...}` becomes `{"error": {...}}` with its status,
    message, type and code, so the SDK raises what it would for OpenAI."""
    mistral.script(status(429, message="Rate limit exceeded"))
    with pytest.raises(openai.RateLimitError) as direct_error:
        direct(mistral).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert direct_error.value.body["message"] == "Rate limit exceeded"  # not OpenAI's shape
    mistral.script(status(429, message="Rate limit exceeded"))
    client = gateway.client(gateway.key(), max_retries=0)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="once", messages=MESSAGES)
    error = limited.value
    assert (error.body["message"], error.type, error.code) == (
        "Rate limit exceeded",
        "rate_limited",
        "1300",
    )
    assert set(error.response.json()["error"]) == {"message", "type", "param", "code"}
    assert error.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(model="once", messages=MESSAGES, store=True)
    assert (
        refused.value.type == "invalid_request_error" and "extra_forbidden" in refused.value.message
    )
    assert "store" in refused.value.message
    runs = gateway.runs(2)
    assert [r["error_type"] for r in runs] == ["rate_limited", "bad_request"]


def test_a_429_is_retried_and_answered(gateway, mistral):
    mistral.script(status(429, message="Rate limit exceeded"))
    key = gateway.key()
    completion = gateway.client(key).chat.completions.create(model="le-chat", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from the emulator."
    assert len(mistral.requests) == 2
    (run,) = gateway.runs(1)
    assert (run["status"], run["attempt_count"]) == ("auto", 2)


def test_through_httpx_streams_and_errors_alike(gateway, mistral, monkeypatch):
    """The path taken when a proxy stands between the gateway and Mistral."""
    import smallops.gateway.upstream

    monkeypatch.setattr(smallops.gateway.upstream, "uses_proxy", lambda url: True)
    mistral.default = ok(request_id="corr-httpx")
    client = gateway.client(gateway.key(), max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="once", messages=MESSAGES, stream=True
    ) as response:
        assert response.headers["mistral-correlation-id"] == "corr-httpx"
        chunks = list(response.parse())
    assert chunks[-1].usage.completion_tokens == 15
    assert ["stream_options" in r.body for r in mistral.requests] == [True, False]
    mistral.script(status(503, message="Service unavailable"))
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="once", messages=MESSAGES)
    assert failed.value.status_code == 503 and failed.value.body["message"] == "Service unavailable"
    assert failed.value.type == "internal_server_error"


def test_streams_sent_together_before_the_refusal_is_known_all_go_through(gateway, mistral):
    """The first streams of a process go out together, each with `stream_options`: every one
    refused is sent again without it, not only the one that happened to learn the refusal."""
    key = gateway.key()

    async def together() -> list:
        client = gateway.aclient(key, max_retries=0)
        calls = [stream_async(client, "once") for _ in range(8)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(together())
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert all(r[-1].usage.prompt_tokens == 25 for r in results)
