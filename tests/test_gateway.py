"""The gateway through the official OpenAI SDK: a real uvicorn server (uvloop, httptools) on
127.0.0.1 in front of the provider emulator, with keys, routes, guards and the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from smallops import Settings
from smallops.gateway.app import Gateway
from smallops.gateway.keys import create_key
from smallops.storage.db import ensure_schema
from smallops.storage.writer import writer_for

from emulators import delay, ok, respond, status
from live_server import serving_app

PRICES = '[prices."emu:model-a"]\ninput = 1.0\noutput = 2.0\n'


def gateway_toml(tmp_path, emulator) -> str:
    return (
        f'[smallops]\ndatabase_url = "sqlite:///{tmp_path / "log.db"}"\n'
        f'[providers.emu]\nkind = "openai"\nbase_url = "{emulator.openai_base_url}"\n'
        'api_key_env = "EMU_KEY"\n'
        + PRICES
        + '[prices."emu:model-c"]\ninput = 100.0\noutput = 100.0\n'
        '[gateway.routes.fast]\nmodel = "emu:model-a"\n'
        '[gateway.routes.private]\nmodel = "emu:model-a"\ncontent = "metadata"\n'
        '[gateway.routes.safe]\nmodel = "emu:model-a"\nfallback = "emu:model-b"\nretries = 1\n'
        '[gateway.routes.limited]\nmodel = "emu:model-a"\nrate_limit = "2/minute"\n'
        '[gateway.routes.capped]\nmodel = "emu:model-c"\ndaily_usd = 0.008\n'
        '[gateway.routes.fragile]\nmodel = "emu:model-x"\nretries = 0\n'
        '[gateway.routes.quick]\nmodel = "emu:model-a"\nretries = 0\ntimeout = 0.3\n'
        '[gateway.routes.sturdy]\nmodel = "emu:model-x"\nretries = 0\nfallback = "emu:model-b"\n'
    )


class Running:
    """A gateway being served, its settings, and helpers to make keys and read its log."""

    def __init__(self, settings: Settings, port: int, upstream_key: str) -> None:
        self.settings = settings
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.upstream_key = upstream_key
        self.engine = create_engine(settings.database_url)

    def key(self, name: str = "team-a", **options) -> str:
        return create_key(self.engine, name, **options)[0]

    def client(self, key: str, **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, **options)

    def aclient(self, key: str, **options) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, **options)

    def runs(self, count: int) -> list[dict]:
        """The runs in the log, oldest first, once there are `count` (a request is logged just
        after its answer is sent)."""
        deadline = time.monotonic() + 5
        while True:
            assert writer_for(self.settings.log).flush(10)
            with self.engine.connect() as connection:
                query = text("SELECT * FROM runs ORDER BY id")
                rows = [dict(row) for row in connection.execute(query).mappings()]
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)


@pytest.fixture
def served(tmp_path, emulator, monkeypatch):
    """The gateway app, and it served: for tests that reach into the app itself."""
    upstream_key = "sk-upstream-" + secrets.token_hex(16)
    monkeypatch.setenv("EMU_KEY", upstream_key)
    (tmp_path / "smallops.toml").write_text(gateway_toml(tmp_path, emulator))
    settings = Settings.load(tmp_path)
    app = Gateway(settings)
    with serving_app(app) as port:
        running = Running(settings, port, upstream_key)
        ensure_schema(running.engine)
        yield app, running
        running.engine.dispose()


@pytest.fixture
def gateway(served):
    return served[1]


MESSAGES = [{"role": "user", "content": "Say hello to ann@example.com"}]


def without_ids(completion) -> dict:
    dumped = completion.model_dump()
    dumped.pop("id"), dumped.pop("created")
    return dumped


def test_a_completion_is_the_upstreams_own_and_is_logged_as_a_run(gateway, emulator):
    """Sync SDK, not streamed: the same completion as from the emulator itself (bar its random
    id), the pinned model sent upstream with the provider's key (never the client's), and one
    run with the key's name, usage and cost."""
    key = gateway.key()
    direct = openai.OpenAI(base_url=emulator.openai_base_url, api_key="sk-direct")
    expected = direct.chat.completions.create(model="model-a", messages=MESSAGES)
    emulator.clear()
    raw = gateway.client(key).chat.completions.with_raw_response.create(
        model="fast", messages=MESSAGES
    )
    completion = raw.parse()
    assert without_ids(completion) == without_ids(expected)
    assert raw.headers["x-smallops-run-id"] and float(raw.headers["x-smallops-overhead-ms"]) >= 0
    assert raw.headers["x-request-id"].startswith("req_")
    sent = emulator.requests[-1]
    assert sent.body["model"] == "model-a" and sent.body["messages"] == MESSAGES
    assert sent.headers["authorization"] == f"Bearer {gateway.upstream_key}"
    assert key not in json.dumps(sent.headers)
    (run,) = gateway.runs(1)
    assert run["id"] == raw.headers["x-smallops-run-id"]
    assert (run["workflow"], run["caller"], run["status"]) == ("gateway:fast", "team-a", "auto")
    assert (run["model_requested"], run["model_served"]) == ("model-a", "model-a")
    assert (run["input_tokens"], run["output_tokens"], run["attempt_count"]) == (25, 15, 1)
    assert run["cost_usd"] == pytest.approx((25 * 1.0 + 15 * 2.0) / 1e6)
    assert "ann@example.com" in run["messages"] and "Hello from the emulator" in run["output"]
    assert key not in json.dumps(run, default=str)


def test_async_streamed_completion_matches_the_upstream_and_records_usage(gateway, emulator):
    """Async SDK, streamed: the same chunks as the emulator's, ending the stream as it does; the
    usage chunk the client did not ask for is kept from it, yet usage is recorded."""
    key = gateway.key()

    async def chunks(client, model, **options):
        stream = await client.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, **options
        )
        return [chunk async for chunk in stream]

    direct = openai.AsyncOpenAI(base_url=emulator.openai_base_url, api_key="sk-direct")
    expected = asyncio.run(chunks(direct, "model-a"))
    through = asyncio.run(chunks(gateway.aclient(key), "fast"))
    assert [without_ids(c) for c in through] == [without_ids(c) for c in expected]
    assert all(c.usage is None for c in through)
    assert emulator.requests[-1].body["stream_options"] == {"include_usage": True}
    asked = asyncio.run(
        chunks(gateway.aclient(key), "fast", stream_options={"include_usage": True})
    )
    assert asked[-1].usage is not None and asked[-1].usage.prompt_tokens == 25
    runs = gateway.runs(2)
    assert [r["status"] for r in runs] == ["auto", "auto"]
    assert all((r["input_tokens"], r["output_tokens"]) == (25, 15) for r in runs)
    assert runs[0]["output"] == json.dumps("Hello from the emulator.")


def test_sync_streamed_and_async_whole_completions_work_too(gateway, emulator):
    key = gateway.key()
    stream = gateway.client(key).chat.completions.create(
        model="fast", messages=MESSAGES, stream=True
    )
    text_ = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text_ == "Hello from the emulator."

    async def whole():
        return await gateway.aclient(key).chat.completions.create(model="fast", messages=MESSAGES)

    assert asyncio.run(whole()).choices[0].message.content == "Hello from the emulator."


def test_models_lists_the_routes_a_key_may_use(gateway):
    scoped = gateway.key("scoped", routes=["fast", "safe"])
    assert [m.id for m in gateway.client(scoped).models.list()] == ["fast", "safe"]
    assert gateway.client(scoped).models.retrieve("safe").owned_by == "smallops"
    everything = gateway.key("all")
    assert len(gateway.client(everything).models.list().data) == 8
    with pytest.raises(openai.PermissionDeniedError) as refused:
        gateway.client(scoped, max_retries=0).chat.completions.create(
            model="capped", messages=MESSAGES
        )
    assert refused.value.code == "model_not_allowed"
    with pytest.raises(openai.NotFoundError) as missing:
        gateway.client(scoped, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
    assert missing.value.code == "model_not_found" and missing.value.param == "model"


def test_a_bad_or_revoked_key_is_a_401_in_openais_shape(gateway, emulator):
    from smallops.gateway.keys import revoke

    with pytest.raises(openai.AuthenticationError) as bad:
        gateway.client("sk-smallops-" + "x" * 43).chat.completions.create(
            model="fast", messages=MESSAGES
        )
    assert bad.value.code == "invalid_api_key" and bad.value.body["type"] == "invalid_request_error"
    response = httpx.post(f"{gateway.base_url}/chat/completions", json={})
    assert response.status_code == 401 and set(response.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    key = gateway.key("leaving")
    assert gateway.client(key).models.list().data
    revoke(gateway.engine, "leaving")
    time.sleep(5.1)  # lookups are trusted for 5 s
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        gateway.client(key).models.list()
    assert emulator.requests == []


BODY = b'{"model": "fast", "messages": [{"role": "user", "content": "Hi"}]'


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        (b', "temperature": NaN', None, "invalid_json"),  # not JSON: never sent on
        (b', "top_p": -Infinity', None, "invalid_json"),
        (b', "stream": "yes"', "stream", "invalid_type"),
        (b', "stream": 1', "stream", "invalid_type"),
        (b', "stream": true, "stream_options": "usage"', "stream_options", "invalid_type"),
        (b', "stream": true, "stream_options": [true]', "stream_options", "invalid_type"),
    ],
)
def test_fields_the_gateway_reads_itself_are_a_400_when_malformed(
    gateway, emulator, extra, param, code
):
    """What the gateway acts on (the JSON itself, `stream`, `stream_options`) is checked before
    anything is sent or counted: a malformed one is the client's 400, never a 500."""
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"authorization": f"Bearer {gateway.key()}", "content-type": "application/json"},
        content=BODY + extra + b"}",
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert response.headers["x-should-retry"] == "false"
    assert emulator.requests == []


def test_an_absurd_max_tokens_is_sent_on_for_the_upstream_to_judge_not_a_500(gateway, emulator):
    """A max_tokens too large for a float used to overflow the budget estimate."""
    huge = b', "max_tokens": 1' + b"0" * 400
    headers = {"authorization": f"Bearer {gateway.key()}", "content-type": "application/json"}
    url = f"{gateway.base_url}/chat/completions"
    sent = httpx.post(url, headers=headers, content=BODY + huge + b"}")
    assert sent.status_code == 200 and emulator.requests[-1].body["max_tokens"] == 10**400
    capped = BODY.replace(b'"fast"', b'"capped"') + huge + b"}"
    refused = httpx.post(url, headers=headers, content=capped)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exhausted"
    assert len(emulator.requests) == 1


def test_a_route_rate_limit_answers_429_with_retry_after(gateway, emulator):
    key = gateway.key()
    client = gateway.client(key, max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model="limited", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="limited", messages=MESSAGES)
    headers = limited.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60 and headers["x-should-retry"] == "true"
    assert limited.value.code == "rate_limit_exceeded" and len(emulator.requests) == 2
    assert [r["error_type"] for r in gateway.runs(3)] == [None, None, "throttled"]


def test_a_keys_own_rate_limit_holds_across_routes(gateway):
    key = gateway.key("slow", rpm=1)
    client = gateway.client(key, max_retries=0)
    client.chat.completions.create(model="fast", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError, match="key 'slow'"):
        client.chat.completions.create(model="safe", messages=MESSAGES)


def test_an_exhausted_budget_is_429_budget_exhausted_and_not_retried(gateway, emulator):
    key = gateway.key()
    client = gateway.client(key)  # the SDK's own retries are on: x-should-retry stops them
    client.chat.completions.create(model="capped", messages=MESSAGES, max_tokens=10)
    with pytest.raises(openai.RateLimitError) as spent:
        client.chat.completions.create(model="capped", messages=MESSAGES, max_tokens=10)
    assert spent.value.code == "budget_exhausted" and "daily budget of $0.008" in str(spent.value)
    assert spent.value.response.headers["x-should-retry"] == "false"
    assert len(emulator.requests) == 1
    runs = gateway.runs(2)
    assert [r["error_type"] for r in runs] == [None, "budget_exhausted"]
    assert runs[0]["cost_usd"] == pytest.approx(40 * 100 / 1e6)


def test_an_upstream_outage_is_retried_then_answered_by_the_fallback_model(gateway, emulator):
    emulator.default = respond(lambda body, _: status(503) if body["model"] == "model-a" else ok())
    key = gateway.key()
    raw = gateway.client(key).chat.completions.with_raw_response.create(
        model="safe", messages=MESSAGES
    )
    assert raw.parse().model == "model-b"
    assert [r.body["model"] for r in emulator.requests] == ["model-a", "model-a", "model-b"]
    primary, secondary = gateway.runs(2)
    assert primary["id"] == raw.headers["x-smallops-run-id"]
    assert (primary["status"], primary["error_type"], primary["attempt_count"]) == (
        "fallback_secondary",
        "server_error",
        2,
    )
    assert (secondary["origin"], secondary["status"], secondary["model_served"]) == (
        "fallback",
        "auto",
        "model-b",
    )


def test_an_upstream_error_after_retries_says_do_not_retry(gateway, emulator):
    emulator.default = status(500, message="upstream is down")
    key = gateway.key()
    with pytest.raises(openai.InternalServerError, match="upstream is down") as failed:
        gateway.client(key).chat.completions.create(model="fast", messages=MESSAGES)
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert len(emulator.requests) == 3  # the route's 2 retries, none by the SDK
    assert gateway.runs(1)[-1]["status"] == "failed"


def test_a_client_that_leaves_mid_stream_cancels_the_upstream_and_is_recorded(gateway, emulator):
    emulator.default = ok("word " * 200)
    emulator.stream_delay = 0.05
    key = gateway.key()
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "fast", "messages": MESSAGES, "stream": True},
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if "word" in line:
                break
    deadline = time.monotonic() + 5
    while emulator.streams_cut == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (emulator.streams_cut, emulator.streams_finished) == (1, 0)
    (run,) = gateway.runs(1)
    assert (run["status"], run["error_type"]) == ("failed", "cancelled")
    assert "word" in run["output"] and run["output_tokens"] > 0


def test_metadata_routes_keep_no_content(gateway):
    key = gateway.key()
    gateway.client(key).chat.completions.create(model="private", messages=MESSAGES)
    (run,) = gateway.runs(1)
    assert run["content"] == "metadata" and run["messages"] is None
    assert "ann@example.com" not in json.dumps(run, default=str)
    assert (run["input_tokens"], run["caller"]) == (25, "team-a")


def test_smallops_gateway_serves_from_the_command_line(tmp_path, emulator, monkeypatch, capsys):
    """The real command in a process of its own: it says where it listens, serves the SDK with
    a key made by `keys create`, and stops on SIGTERM."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from conftest import smallops

    monkeypatch.setenv("EMU_KEY", "sk-upstream-" + secrets.token_hex(16))
    (tmp_path / "smallops.toml").write_text(gateway_toml(tmp_path, emulator))
    code, key, _ = smallops(capsys, "-p", str(tmp_path), "gateway", "keys", "create", "cli")
    assert code == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-c", "from smallops.cli import main; main()"]
    process = subprocess.Popen(
        [*command, "-p", str(tmp_path), "gateway", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert f"smallops gateway at http://127.0.0.1:{port}/v1" in process.stdout.readline()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key.strip())
        deadline = time.monotonic() + 10
        while True:
            try:
                reply = client.chat.completions.create(model="fast", messages=MESSAGES)
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert reply.choices[0].message.content == "Hello from the emulator."
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    assert process.returncode == 128 + signal.SIGTERM, err  # stopped, its log drained
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    with engine.connect() as connection:
        callers = connection.execute(text("SELECT caller FROM runs")).scalars().all()
    engine.dispose()
    assert callers == ["cli"]


def test_a_moving_alias_stops_the_gateway_before_it_serves(tmp_path, capsys):
    (tmp_path / "smallops.toml").write_text('[gateway.routes.fast]\nmodel = "openai:gpt-4o-mini"\n')
    from conftest import smallops

    code, out, err = smallops(capsys, "-p", str(tmp_path), "gateway", "--port", "9")
    assert code == 2 and "moving alias" in err and "gpt-4o-mini-2024-07-18" in err
    assert "smallops gateway at" not in out
    # The route's own advice, once: not the Python keyword argument a workflow takes.
    assert "allow_unpinned = true on the route" in err and "allow_unpinned=True" not in err


def test_an_open_breaker_answers_503_or_sends_straight_to_the_fallback(gateway, emulator):
    """Ten failures in the window open the breaker of the upstream model: then `fragile` gets
    503 breaker_open at once, and `sturdy` (same model, with a fallback) is answered by its
    fallback without the failing model being asked again."""
    emulator.default = respond(lambda body, _: status(500) if body["model"] == "model-x" else ok())
    client = gateway.client(gateway.key(), max_retries=0)
    for _ in range(10):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="fragile", messages=MESSAGES)
    assert len(emulator.requests) == 10
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model="fragile", messages=MESSAGES)
    assert refused.value.status_code == 503 and refused.value.code == "breaker_open"
    assert len(emulator.requests) == 10
    assert client.chat.completions.create(model="sturdy", messages=MESSAGES).model == "model-b"
    assert [r.body["model"] for r in emulator.requests[10:]] == ["model-b"]
    runs = gateway.runs(13)
    assert [r["error_type"] for r in runs[10:]] == ["breaker_open", "breaker_open", None]


@pytest.fixture
def through_httpx(monkeypatch):
    """Upstream requests through httpx, the path taken when a proxy stands in the way."""
    import smallops.gateway.upstream

    monkeypatch.setattr(smallops.gateway.upstream, "uses_proxy", lambda url: True)


def test_through_httpx_answers_streams_retries_and_cancels_alike(through_httpx, gateway, emulator):
    key = gateway.key()
    client = gateway.client(key)
    assert client.chat.completions.create(model="fast", messages=MESSAGES).usage.total_tokens == 40
    stream = client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    emulator.script(status(500), status(500), status(500))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fast", messages=MESSAGES)
    emulator.default = ok("word " * 200)
    emulator.stream_delay = 0.05
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "fast", "messages": MESSAGES, "stream": True},
    ) as response:
        next(line for line in response.iter_lines() if "word" in line)
    runs = gateway.runs(4)
    assert [r["error_type"] for r in runs] == [None, None, "server_error", "cancelled"]
    deadline = time.monotonic() + 5
    while emulator.streams_cut == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emulator.streams_cut == 1


def test_a_proxy_in_the_environment_is_honoured_unless_the_host_is_exempt(monkeypatch):
    from smallops.gateway.upstream import uses_proxy

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert not uses_proxy("https://api.openai.com/v1/chat/completions")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert uses_proxy("https://api.openai.com/v1/chat/completions")
    assert not uses_proxy("http://vllm.internal/v1/chat/completions")
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert not uses_proxy("https://api.openai.com/v1/chat/completions")


@pytest.mark.postgres
def test_keys_seen_before_still_work_while_the_database_is_down(
    tmp_path, emulator, monkeypatch, postgres_url
):
    """Postgres behind a proxy that is cut: a key looked up before is judged by that lookup,
    a key never seen gets 503 key_store_unavailable (retry in 2 s), never a traceback."""
    from tcpproxy import TcpProxy

    monkeypatch.setenv("EMU_KEY", "sk-upstream-" + secrets.token_hex(16))
    proxy = TcpProxy(("127.0.0.1", 5432))
    host = postgres_url.split("@", 1)[1].split("/", 1)[0]
    proxied = postgres_url.replace(host, f"127.0.0.1:{proxy.port}", 1)
    toml = gateway_toml(tmp_path, emulator).replace(f"sqlite:///{tmp_path / 'log.db'}", proxied)
    (tmp_path / "smallops.toml").write_text(toml)
    settings = Settings.load(tmp_path)
    app = Gateway(settings)
    app.keys.ttl = 0.2
    engine = create_engine(settings.database_url.replace("postgresql://", "postgresql+psycopg://"))
    seen, unseen = create_key(engine, "seen")[0], create_key(engine, "unseen")[0]
    engine.dispose()
    try:
        with serving_app(app) as port:
            base_url = f"http://127.0.0.1:{port}/v1"
            assert openai.OpenAI(base_url=base_url, api_key=seen).models.list().data
            time.sleep(0.3)
            proxy.cut()
            assert openai.OpenAI(base_url=base_url, api_key=seen).models.list().data
            with pytest.raises(openai.InternalServerError) as down:
                openai.OpenAI(base_url=base_url, api_key=unseen, max_retries=0).models.list()
            assert down.value.status_code == 503 and down.value.code == "key_store_unavailable"
            assert down.value.response.headers["retry-after"] == "2"
    finally:
        proxy.restore()
        proxy.close()


def test_a_429_storm_admits_exactly_the_limit_and_answers_the_rest_at_once(gateway, emulator):
    """50 requests at once on a route limited to 2 a minute: 2 reach the upstream, 48 get
    429 with Retry-After, and all 50 are in the log."""
    key = gateway.key()

    async def storm():
        client = gateway.aclient(key, max_retries=0)

        async def one():
            try:
                await client.chat.completions.create(model="limited", messages=MESSAGES)
                return 200
            except openai.RateLimitError as exc:
                assert int(exc.response.headers["retry-after"]) >= 1
                return 429

        return await asyncio.gather(*(one() for _ in range(50)))

    codes = asyncio.run(storm())
    assert (codes.count(200), codes.count(429)) == (2, 48) and len(emulator.requests) == 2
    runs = gateway.runs(50)
    assert sum(r["error_type"] == "throttled" for r in runs) == 48


def test_an_upstream_429_is_waited_out_and_a_slow_upstream_is_a_504(gateway, emulator):
    key = gateway.key()
    emulator.script(status(429, retry_after=0.2), ok())
    raw = gateway.client(key).chat.completions.with_raw_response.create(
        model="fast", messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content and "x-should-retry" not in raw.headers
    (run,) = gateway.runs(1)
    assert run["attempt_count"] == 2 and json.loads(run["attempts"])[0]["retry_in_s"] >= 0.2
    emulator.script(delay(2.0))
    with pytest.raises(openai.APIStatusError) as slow:
        gateway.client(key, max_retries=0).chat.completions.create(model="quick", messages=MESSAGES)
    assert slow.value.status_code == 504 and slow.value.code == "upstream_timeout"
    assert gateway.runs(2)[-1]["error_type"] == "timeout"


def test_several_workers_serve_and_log_alike(tmp_path, emulator, monkeypatch, capsys):
    """`--workers 2`: each worker process builds its own gateway from the project; requests
    spread over them are all answered and all logged."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from conftest import smallops

    monkeypatch.setenv("EMU_KEY", "sk-upstream-" + secrets.token_hex(16))
    (tmp_path / "smallops.toml").write_text(gateway_toml(tmp_path, emulator))
    code, key, _ = smallops(capsys, "-p", str(tmp_path), "gateway", "keys", "create", "two")
    assert code == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-c", "from smallops.cli import main; main()"]
    process = subprocess.Popen(
        [*command, "-p", str(tmp_path), "gateway", "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert "(2 worker(s))" in process.stdout.readline()
        assert "each worker keeps its own rate limits" in process.stdout.readline()
        deadline = time.monotonic() + 20
        while True:
            try:
                with httpx.Client() as probe_client:
                    probe_client.get(f"http://127.0.0.1:{port}/v1/models")
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)

        async def many():
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key.strip())
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(model="fast", messages=MESSAGES)
                    for _ in range(20)
                )
            )
            return [r.choices[0].message.content for r in replies]

        assert set(asyncio.run(many())) == {"Hello from the emulator."}
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    with engine.connect() as connection:
        callers = connection.execute(text("SELECT caller FROM runs")).scalars().all()
    engine.dispose()
    assert callers == ["two"] * 20, err


def test_the_anthropic_sdk_gets_a_clear_refusal(gateway, emulator):
    """Anthropic's SDK pointed at the gateway reaches /v1/messages: a 404 that says only the
    OpenAI format is served, and nothing reaches the upstream."""
    import anthropic

    client = anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{gateway.port}", api_key="x", max_retries=0
    )
    with pytest.raises(anthropic.NotFoundError, match=r"Messages API .* not supported"):
        client.messages.create(
            model="fast", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    assert emulator.requests == []


def test_a_key_from_a_store_is_fetched_once_and_a_rotation_costs_one_401(
    tmp_path, emulator, monkeypatch
):
    """The upstream key comes from the provider's secret reference (a `command:` store here),
    cached as for workflows: many requests, one fetch; a rotated key, one 401, one refetch, and
    the client never sees the refusal."""
    from keyscript import KeyScript, provider_accepting

    k1, k2 = "sk-one-" + secrets.token_hex(16), "sk-two-" + secrets.token_hex(16)
    script = KeyScript(tmp_path / "store", k1)
    current, refused = [k1], []
    emulator.default = respond(provider_accepting(lambda: current[0], refused))
    toml = gateway_toml(tmp_path, emulator).replace(
        'api_key_env = "EMU_KEY"\n', f"api_key = {json.dumps(script.reference)}\n"
    )
    (tmp_path / "smallops.toml").write_text(toml)
    settings = Settings.load(tmp_path)
    with serving_app(Gateway(settings)) as port:
        running = Running(settings, port, k1)
        ensure_schema(running.engine)
        client = running.client(running.key())
        for _ in range(10):
            client.chat.completions.create(model="fast", messages=MESSAGES)
        assert script.count == 1 and refused == []
        script.set(key=k2)
        current[0] = k2
        answer = client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
        assert answer.http_response.status_code == 200
        assert refused == [k1] and script.count == 2
        client.chat.completions.create(model="fast", messages=MESSAGES)
        assert script.count == 2 and refused == [k1]
        runs = running.runs(12)
        running.engine.dispose()
    assert len(runs) == 12 and {run["status"] for run in runs} == {"auto"}
    assert not [run for run in runs if k1 in json.dumps(run, default=str)]


# -- upstreams whose streams end badly ---------------------------------------------------------


class ScriptedStream:
    """An upstream that answers every request with `status` (and `headers`) and these pieces of
    body, as they are (a float is a pause, in seconds), then ends the response cleanly; it
    counts the requests whose client closed the connection before that end."""

    def __init__(self, *pieces: bytes | float, headers: tuple = (), status: int = 200) -> None:
        self.pieces = pieces
        self.headers = list(headers)
        self.status = status
        self.requests = 0
        self.left = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.requests += 1
        start = [(b"content-type", b"text/event-stream"), *self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": start})
        answering = asyncio.create_task(self._answer(send))
        watching = asyncio.create_task(receive())  # http.disconnect, once the client goes
        await asyncio.wait({answering, watching}, return_when=asyncio.FIRST_COMPLETED)
        if not answering.done():
            self.left += 1
            answering.cancel()
        watching.cancel()

    async def _answer(self, send) -> None:
        for piece in self.pieces:
            if isinstance(piece, float):
                await asyncio.sleep(piece)
            else:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def scripted_gateway(tmp_path, monkeypatch, upstream: ScriptedStream | int, kind: str = "openai"):
    """A gateway whose route `r` (no retries, 1 s timeout) goes to `upstream` (an application
    served here, or the port of a server already listening); yields Running."""
    monkeypatch.setenv("RAW_KEY", "sk-raw-" + secrets.token_hex(16))
    stack = contextlib.ExitStack()
    port = upstream if isinstance(upstream, int) else stack.enter_context(serving_app(upstream))
    base = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    (tmp_path / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "sqlite:///{tmp_path / "log.db"}"\n'
        f'[providers.raw]\nkind = "{kind}"\nbase_url = "{base}"\napi_key_env = "RAW_KEY"\n'
        '[gateway.routes.r]\nmodel = "raw:m"\nretries = 0\ntimeout = 1\nallow_unpinned = true\n'
    )
    settings = Settings.load(tmp_path)
    running = Running(settings, stack.enter_context(serving_app(Gateway(settings))), "")
    ensure_schema(running.engine)
    stack.callback(running.engine.dispose)
    return stack, running


def chunk(delta: dict | None, **extra) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m-1"}
    return b"data: " + json.dumps({**body, "choices": choices, **extra}).encode() + b"\n\n"


USAGE_CHUNK = chunk(None, usage={"prompt_tokens": 1000, "completion_tokens": 77})
HI = chunk({"role": "assistant", "content": "Hi"})


@pytest.mark.parametrize(
    "last",
    [b"data: [DONE]\n", b"data: [DONE]", b"data: [DONE]\r\n\r\n"],
    ids=["lf", "none", "crlf"],
)
def test_a_stream_whose_last_event_lacks_its_blank_line_still_ends_well(
    tmp_path, monkeypatch, last
):
    """An upstream that ends `data: [DONE]` with one newline or none (or uses CRLF) finished:
    the client gets [DONE] and nothing after it, and the run is what it was, with its usage."""
    pieces = (HI, USAGE_CHUNK, last)
    if last.endswith(b"\r\n"):
        pieces = tuple(p.replace(b"\n\n", b"\r\n\r\n") for p in pieces)
    stack, running = scripted_gateway(tmp_path, monkeypatch, ScriptedStream(*pieces))
    with stack:
        with httpx.stream(
            "POST",
            f"{running.base_url}/chat/completions",
            headers={"authorization": f"Bearer {running.key()}"},
            json={"model": "r", "messages": MESSAGES, "stream": True},
        ) as response:
            body = response.read()
        (run,) = running.runs(1)
    assert body.endswith(b"data: [DONE]\n\n") and b"error" not in body
    assert (run["status"], run["error_type"]) == ("auto", None)
    assert (run["input_tokens"], run["output_tokens"], run["output"]) == (1000, 77, '"Hi"')


def test_a_stream_cut_mid_event_ends_with_an_error_the_sdk_can_read(tmp_path, monkeypatch):
    """Half an event is not passed on: the client's SDK raises the gateway's error, not a
    JSON decoding error on the half chunk."""
    upstream = ScriptedStream(HI, USAGE_CHUNK[:40])
    stack, running = scripted_gateway(tmp_path, monkeypatch, upstream)
    with stack:
        client = running.client(running.key(), max_retries=0)
        stream = client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="ended without"):
            list(stream)
        (run,) = running.runs(1)
    assert (run["status"], run["error_type"]) == ("failed", "bad_response")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "counts",
    [
        b'"lots"',
        b"1e400",
        b"-5000",
        b"[1]",
        b"true",
    ],
)
def test_token_counts_that_are_not_counts_are_zero_not_a_failure(
    tmp_path, monkeypatch, counts, stream
):
    """An upstream's usage that is not a count (a string, infinity, a negative number that
    would lower a budget) is recorded as 0: the answer still reaches the client."""
    completion = (
        b'{"id": "c1", "object": "chat.completion", "created": 1, "model": "m-1", "choices": '
        b'[{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": '
        b'"stop"}], "usage": {"prompt_tokens": ' + counts + b', "completion_tokens": 7, '
        b'"prompt_tokens_details": {"cached_tokens": ' + counts + b"}}}"
    )
    body = b"data: " + completion + b"\n\ndata: [DONE]\n\n" if stream else completion
    stack, running = scripted_gateway(tmp_path, monkeypatch, ScriptedStream(body))
    with stack:
        response = httpx.post(
            f"{running.base_url}/chat/completions",
            headers={"authorization": f"Bearer {running.key()}"},
            json={"model": "r", "messages": MESSAGES, "stream": stream},
        )
        (run,) = running.runs(1)
    assert response.status_code == 200 and b'"Hi"' in response.content
    assert b"error" not in response.content
    assert (run["status"], run["input_tokens"], run["cached_tokens"]) == ("auto", 0, 0)
    assert run["output_tokens"] == 7


@pytest.mark.parametrize("path", ["http1", "httpx"])
def test_a_whole_answer_trickled_past_the_routes_timeout_is_a_504(tmp_path, monkeypatch, path):
    """The route's timeout bounds the whole request, not each wait for the next bytes: an
    upstream that keeps sending a space every half second does not hold the client forever."""
    if path == "httpx":
        import smallops.gateway.upstream

        monkeypatch.setattr(smallops.gateway.upstream, "uses_proxy", lambda url: True)
    trickle = (b"{", *[piece for _ in range(8) for piece in (0.4, b" ")], b"}")
    stack, running = scripted_gateway(tmp_path, monkeypatch, ScriptedStream(*trickle))
    with stack:
        began = time.monotonic()
        response = httpx.post(
            f"{running.base_url}/chat/completions",
            headers={"authorization": f"Bearer {running.key()}"},
            json={"model": "r", "messages": MESSAGES},
            timeout=10,
        )
        took = time.monotonic() - began
        (run,) = running.runs(1)
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    assert took < 2.5
    assert (run["status"], run["error_type"]) == ("failed", "timeout")


def test_an_error_event_mid_stream_is_passed_on_once_and_logged_as_the_upstreams(
    tmp_path, monkeypatch
):
    """OpenAI ends a stream that fails mid-way with an `error` event: the client's SDK raises
    it, nothing follows it, and the run records the upstream's error, not a missing [DONE]."""
    failed = b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
    stack, running = scripted_gateway(tmp_path, monkeypatch, ScriptedStream(HI, failed))
    with stack:
        key = running.key()
        with httpx.stream(
            "POST",
            f"{running.base_url}/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "r", "messages": MESSAGES, "stream": True},
        ) as response:
            body = response.read()
        client = running.client(key, max_retries=0)
        stream = client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="The server had an error"):
            list(stream)
        run = running.runs(2)[0]
    assert body.endswith(failed) and body.count(b'"error"') == 1
    assert (run["status"], run["error_type"]) == ("failed", "server_error")
    assert "The server had an error" in run["error_message"] and run["output"] == '"Hi"'


def test_a_clients_own_bad_stream_options_do_not_stop_usage_being_asked_for(gateway, emulator):
    """A 400 naming `stream_options` for a key the client put there is the client's error, not
    the provider refusing the field: it goes back to the client, and later streams still ask
    for usage (else any key holder could have every stream's cost estimated)."""

    def strict(body, headers):  # OpenAI's answer to a key it does not know
        if set(body.get("stream_options") or {}) - {"include_usage"}:
            return status(400, message="Unrecognized argument: stream_options.bogus")
        return ok()

    emulator.default = respond(strict)
    client = gateway.client(gateway.key())
    with pytest.raises(openai.BadRequestError):
        list(
            client.chat.completions.create(
                model="fast", messages=MESSAGES, stream=True, stream_options={"bogus": True}
            )
        )
    assert len(emulator.requests) == 1
    list(client.chat.completions.create(model="fast", messages=MESSAGES, stream=True))
    assert emulator.requests[-1].body["stream_options"] == {"include_usage": True}
    refused, answered = sorted(gateway.runs(2), key=lambda run: run["status"] == "auto")
    assert refused["error_type"] is not None and answered["status"] == "auto"
    assert (answered["input_tokens"], answered["output_tokens"]) == (25, 15)


@pytest.mark.parametrize("proxied", [False, True], ids=["http1", "httpx"])
def test_a_slow_client_is_not_taken_for_an_idle_upstream(tmp_path, emulator, monkeypatch, proxied):
    """The stream's idle bound is the upstream's: time the gateway spends waiting on its own
    client (a reader slower than the route's timeout) is not the upstream's silence, and is
    not cut as a timeout counted against the route's breaker."""
    import smallops.gateway.upstream

    if proxied:
        monkeypatch.setattr(smallops.gateway.upstream, "uses_proxy", lambda url: True)
    monkeypatch.setenv("EMU_KEY", "sk-upstream")
    (tmp_path / "smallops.toml").write_text(gateway_toml(tmp_path, emulator))
    settings = Settings.load(tmp_path)
    app = Gateway(settings)
    engine = create_engine(settings.database_url)
    ensure_schema(engine)
    key = create_key(engine, "team-a")[0]
    emulator.default = ok("word " * 40)
    body = json.dumps({"model": "quick", "messages": MESSAGES, "stream": True}).encode()
    scope = {
        "type": "http",
        "path": "/v1/chat/completions",
        "method": "POST",
        "headers": [(b"authorization", f"Bearer {key}".encode())],
    }

    async def main() -> bytes:
        sent: list[bytes] = []
        received = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if received:
                return received.pop()
            await asyncio.Event().wait()  # the client stays

        async def send(message):
            if message["type"] == "http.response.body":
                if not sent:
                    await asyncio.sleep(0.6)  # over the route's 0.3 s: a slow reader
                sent.append(message.get("body", b""))

        await app(scope, receive, send)
        await app._connections.aclose()
        return b"".join(sent)

    streamed = asyncio.run(main())
    assert b"[DONE]" in streamed and b'"error"' not in streamed
    assert writer_for(settings.log).flush(10)
    with engine.connect() as connection:
        (run,) = connection.execute(text("SELECT status, error_type FROM runs")).all()
    assert tuple(run) == ("auto", None)
    engine.dispose()


def test_an_event_whose_data_spans_several_lines_is_read_as_one_chunk(tmp_path, monkeypatch):
    """SSE joins an event's `data:` lines with a newline, and JSON may break between tokens:
    such a chunk is the client's as any other (its SDK reads it so), so its text and usage are
    recorded and, unasked for, the usage chunk is kept from the client all the same."""
    split_usage = USAGE_CHUNK.replace(b', "usage": ', b',\ndata:  "usage": ')
    split_hi = HI.replace(b', "choices": ', b',\ndata: "choices": ')
    assert split_usage.count(b"data:") == split_hi.count(b"data:") == 2
    upstream = ScriptedStream(split_hi, split_usage, b"data: [DONE]\n\n")
    stack, running = scripted_gateway(tmp_path, monkeypatch, upstream)
    with stack:
        client = running.client(running.key(), max_retries=0)
        stream = client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        got = list(stream)
        (run,) = running.runs(1)
    assert [chunk.choices[0].delta.content for chunk in got] == ["Hi"]
    assert (run["status"], run["error_type"]) == ("auto", None)
    assert (run["input_tokens"], run["output_tokens"], run["output"]) == (1000, 77, '"Hi"')
