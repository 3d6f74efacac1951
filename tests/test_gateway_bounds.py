"""The gateway against upstreams that do not stop: answers too large to hold, headers without
end, streams that only keep the connection alive, streams that fail after they started, and
clients that leave a workflow route while its call is out. Real HTTP throughout: the gateway
served by uvicorn, the upstream a small ASGI application (test_gateway.ScriptedStream)."""

from __future__ import annotations

import socketserver
import threading
import time

import httpx
import openai
import pytest

import smallops.gateway.upstream
from test_gateway import HI, MESSAGES, USAGE_CHUNK, ScriptedStream, scripted_gateway


def post(running, stream: bool = False, timeout: float = 10) -> httpx.Response:
    return httpx.post(
        f"{running.base_url}/chat/completions",
        headers={"authorization": f"Bearer {running.key()}"},
        json={"model": "r", "messages": MESSAGES, "stream": stream},
        timeout=timeout,
    )


@pytest.fixture(params=["http1", "httpx"])
def path(request, monkeypatch):
    """Either upstream client: the gateway's own, or httpx (taken when a proxy is set)."""
    if request.param == "httpx":
        monkeypatch.setattr(smallops.gateway.upstream, "uses_proxy", lambda url: True)
    return request.param


# -- whole answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_a_whole_answer_over_the_size_limit_is_a_502_and_a_failed_run(
    tmp_path, monkeypatch, path, declared
):
    """An answer larger than MAX_ANSWER_BYTES is not held in memory: the gateway stops reading
    it (at its content-length, or as the bytes pass the limit), answers 502 in OpenAI's shape,
    and logs the run as failed, saying why."""
    monkeypatch.setattr(smallops.gateway.upstream, "MAX_ANSWER_BYTES", 4096)
    body = b'{"choices": [], "pad": "' + b"x" * 3000
    pieces = (body, 0.05, b"y" * 3000 + b'"}')
    headers = ((b"content-length", str(len(body) + 3002).encode()),) if declared else ()
    upstream = ScriptedStream(*pieces, headers=headers)
    stack, running = scripted_gateway(tmp_path, monkeypatch, upstream)
    with stack:
        response = post(running)
        (run,) = running.runs(1)
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "upstream_bad_response")
    assert "limit of 4096 bytes" in error["message"]
    assert (run["status"], run["error_type"]) == ("failed", "bad_response")
    assert "limit of 4096 bytes" in run["error_message"]


def test_an_answer_just_under_the_limit_is_passed_on(tmp_path, monkeypatch, path):
    monkeypatch.setattr(smallops.gateway.upstream, "MAX_ANSWER_BYTES", 4096)
    completion = (
        b'{"id": "c1", "object": "chat.completion", "created": 1, "model": "m-1", "choices": '
        b'[{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": '
        b'"stop"}], "pad": "'
    )
    completion += b"x" * (4096 - len(completion) - 2) + b'"}'
    stack, running = scripted_gateway(tmp_path, monkeypatch, ScriptedStream(completion))
    with stack:
        response = post(running)
        (run,) = running.runs(1)
    assert response.status_code == 200 and len(response.content) == 4096
    assert run["status"] == "auto"


def test_headers_without_end_are_a_502_not_memory(tmp_path, monkeypatch):
    """The gateway's own client drops an upstream whose headers go on past 64 KiB."""
    huge = tuple((f"x-pad-{n}".encode(), b"v" * 1000) for n in range(100))
    stack, running = scripted_gateway(tmp_path, monkeypatch, ScriptedStream(b"{}", headers=huge))
    with stack:
        response = post(running)
        (run,) = running.runs(1)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert "headers are over 64 KiB" in response.json()["error"]["message"]
    assert (run["status"], run["error_type"]) == ("failed", "connection_error")


def test_a_nul_byte_in_a_whole_answer_is_a_bad_response_not_a_crash(tmp_path, monkeypatch, path):
    raw = b'{"choices": [{"message": {"content": "a\x00b"}}]}'
    stack, running = scripted_gateway(tmp_path, monkeypatch, ScriptedStream(raw))
    with stack:
        response = post(running)
        (run,) = running.runs(1)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_bad_response"
    assert (run["status"], run["error_type"]) == ("failed", "bad_response")


# -- streams that only keep the connection alive -------------------------------------------------

DONE = b"data: [DONE]\n\n"
COMMENT = b": keep-alive\n\n"


def read_stream(running, key: str | None = None) -> tuple[bytes, float]:
    began = time.monotonic()
    with httpx.stream(
        "POST",
        f"{running.base_url}/chat/completions",
        headers={"authorization": f"Bearer {key or running.key()}"},
        json={"model": "r", "messages": MESSAGES, "stream": True},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        body = response.read()
    return body, time.monotonic() - began


def wait_for(condition, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_a_stream_of_keep_alives_only_is_cut_at_the_routes_timeout(tmp_path, monkeypatch, path):
    """Comments (`: keep-alive`) every 0.2 s after the first chunk: the route's timeout (1 s)
    runs from the last data, so the gateway ends the stream with an error event, closes the
    upstream connection, and logs the run as failed on a timeout, with the text that came."""
    upstream = ScriptedStream(HI, *[piece for _ in range(50) for piece in (0.2, COMMENT)], DONE)
    stack, running = scripted_gateway(tmp_path, monkeypatch, upstream)
    with stack:
        body, took = read_stream(running)
        (run,) = running.runs(1)
        assert wait_for(lambda: upstream.left == 1)
    assert 1.0 <= took < 3.0
    assert body.startswith(HI) and b"upstream_stream_failed" in body and DONE not in body
    assert b"no data for 1 s" in body
    assert (run["status"], run["error_type"], run["output"]) == ("failed", "timeout", '"Hi"')


def test_a_stream_that_sends_nothing_after_its_headers_is_cut_too(tmp_path, monkeypatch, path):
    upstream = ScriptedStream(30.0, DONE)
    stack, running = scripted_gateway(tmp_path, monkeypatch, upstream)
    with stack:
        body, took = read_stream(running)
        (run,) = running.runs(1)
        assert wait_for(lambda: upstream.left == 1)
    assert took < 3.0 and b"upstream_stream_failed" in body
    assert (run["status"], run["error_type"]) == ("failed", "timeout")


def test_an_error_body_trickled_in_is_cut_at_the_routes_timeout_in_all(tmp_path, monkeypatch, path):
    """A 500 whose body comes a few bytes every 0.3 s (each wait inside the 1 s timeout, 6 s
    in all): the gateway stops reading at the timeout and answers, the run failed on it."""
    pieces = [piece for _ in range(20) for piece in (0.3, b'{"error": ')]
    upstream = ScriptedStream(*pieces, b"{}}", status=500)
    stack, running = scripted_gateway(tmp_path, monkeypatch, upstream)
    with stack:
        began = time.monotonic()
        response = post(running, stream=True)
        took = time.monotonic() - began
        (run,) = running.runs(1)
    assert took < 3.0, took
    assert response.status_code >= 500 and "error" in response.json()
    assert (run["status"], run["error_type"]) == ("failed", "timeout")


def test_data_slower_than_the_timeout_in_all_but_not_between_events_is_whole(
    tmp_path, monkeypatch, path
):
    """The bound is between data events: five chunks 0.5 s apart (keep-alives between them)
    take longer than the 1 s timeout in all, and still arrive whole."""
    pieces = [piece for _ in range(5) for piece in (0.25, COMMENT, 0.25, HI)]
    upstream = ScriptedStream(*pieces, USAGE_CHUNK, DONE)
    stack, running = scripted_gateway(tmp_path, monkeypatch, upstream)
    with stack:
        body, took = read_stream(running)
        (run,) = running.runs(1)
    assert took >= 2.5 and body.endswith(DONE) and body.count(b'"Hi"') == 5
    assert (run["status"], run["output_tokens"]) == ("auto", 77)


def test_an_anthropic_stream_of_pings_only_is_cut_and_keeps_anthropics_counts(
    tmp_path, monkeypatch, path
):
    """Anthropic's keep-alive is an `event: ping`: it is not data either. The run keeps the
    input tokens Anthropic counted at message_start."""
    from test_gateway_anthropic import HELLO, STARTED, event

    ping = event("ping")
    upstream = ScriptedStream(STARTED, HELLO, *[p for _ in range(50) for p in (0.2, ping)])
    stack, running = scripted_gateway(tmp_path, monkeypatch, upstream, "anthropic")
    with stack:
        client = running.client(running.key(), max_retries=0)
        began = time.monotonic()
        stream = client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="no data for 1 s"):
            list(stream)
        took = time.monotonic() - began
        (run,) = running.runs(1)
        assert wait_for(lambda: upstream.left == 1)
    assert took < 3.0
    assert (run["status"], run["error_type"], run["output"]) == ("failed", "timeout", '"Hello"')
    assert run["input_tokens"] == 1000


# -- streams that fail after they started, and the breaker ------------------------------------


class RawUpstream:
    """A TCP server on 127.0.0.1 that answers each request with `reply`, bytes as they are,
    then closes the connection: a cut, when the reply is not a whole HTTP answer."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.requests = 0
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = b""
                while b"\r\n\r\n" not in data:
                    if not (more := self.request.recv(65536)):
                        return
                    data += more
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += self.request.recv(65536)
                upstream.requests += 1
                self.request.sendall(upstream.reply)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]

    def __enter__(self) -> RawUpstream:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
ERROR_EVENT = b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'


@pytest.mark.parametrize(
    ("ending", "kind"),
    [
        ("no-done", "bad_response"),
        ("error-event", "server_error"),
        ("cut", "connection_error"),
        ("keep-alives", "timeout"),
    ],
)
def test_streams_that_fail_midway_open_the_breaker_as_failed_answers_do(
    tmp_path, monkeypatch, path, ending, kind
):
    """Ten streams that start well and then fail (no [DONE], an error event, a connection
    cut mid-body, keep-alives past the timeout) are ten failures for the route's breaker:
    the next request is a 503 breaker_open, and the upstream is not asked again."""
    if ending == "cut":
        # chunked, one whole event, then the connection closes mid-body
        reply = SSE_HEAD + b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(HI) + HI
        reply += b"\r\n"
        raw = RawUpstream(reply)
        stack, running = scripted_gateway(tmp_path, monkeypatch, raw.port)
        stack.enter_context(raw)
        upstream = raw
    else:
        tail = {"no-done": (), "error-event": (ERROR_EVENT,), "keep-alives": (1.5, COMMENT)}
        upstream = ScriptedStream(HI, *tail[ending])
        stack, running = scripted_gateway(tmp_path, monkeypatch, upstream)
    with stack:
        client = running.client(running.key(), max_retries=0)
        for _ in range(10):
            stream = client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
            with pytest.raises(openai.APIError):
                list(stream)
        assert len(running.runs(10)) == 10  # logged once the breaker has the outcome
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        runs = running.runs(11)
    assert refused.value.status_code == 503 and refused.value.code == "breaker_open"
    assert upstream.requests == 10
    assert [r["error_type"] for r in runs] == [kind] * 10 + ["breaker_open"]


def test_a_client_that_leaves_mid_stream_is_no_failure_of_the_upstream(tmp_path, monkeypatch):
    """Ten clients that leave mid-stream do not open the breaker: the upstream was fine."""
    upstream = ScriptedStream(HI, 0.5, HI, USAGE_CHUNK, DONE)
    stack, running = scripted_gateway(tmp_path, monkeypatch, upstream)
    with stack:
        key = running.key()
        for _ in range(10):
            with httpx.stream(
                "POST",
                f"{running.base_url}/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "r", "messages": MESSAGES, "stream": True},
            ) as response:
                next(response.iter_lines())
        assert wait_for(lambda: len(running.runs(10)) == 10)
        body, _ = read_stream(running, key)
        runs = running.runs(11)
    assert body.endswith(DONE)
    assert [r["error_type"] for r in runs] == ["cancelled"] * 10 + [None]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_an_event_that_never_ends_is_cut_at_the_event_limit(tmp_path, monkeypatch, kind):
    """Bytes without the blank line that ends an event are held up to MAX_EVENT_BYTES, then the
    stream is cut as a bad_response: not buffered until the timeout."""
    monkeypatch.setattr(smallops.gateway.upstream, "MAX_EVENT_BYTES", 2**20)
    endless = b"data: " + b"x" * 65536
    first = HI
    if kind == "anthropic":
        from test_gateway_anthropic import HELLO, STARTED

        first = STARTED + HELLO
    upstream = ScriptedStream(first, *[endless] * 40, DONE)
    stack, running = scripted_gateway(tmp_path, monkeypatch, upstream, kind)
    with stack:
        body, _ = read_stream(running)
        (run,) = running.runs(1)
    assert b"upstream_stream_failed" in body and b"over 1 MiB" in body
    assert (run["status"], run["error_type"]) == ("failed", "bad_response")


def test_a_nul_in_a_streamed_event_is_relayed_and_logged(tmp_path, monkeypatch, path):
    nul = b'data: {"choices": [{"index": 0, "delta": {"content": "a\\u0000b"}}]}\n\n'
    stack, running = scripted_gateway(tmp_path, monkeypatch, ScriptedStream(nul, DONE))
    with stack:
        body, _ = read_stream(running)
        (run,) = running.runs(1)
    assert body == nul + DONE
    assert run["status"] == "auto" and run["output"].startswith('"a')
