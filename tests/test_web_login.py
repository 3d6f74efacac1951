"""Logging in to the review UI: tries are counted per name and per address before any password
is checked, so even a burst gets no more checks than the limit; X-Forwarded-For counts only from
a proxy the operator named; the checks hold a bounded amount of memory; and a session ends when
the credential it was made with changes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from smallops import Settings
from smallops.review.desk import ReviewDesk
from smallops.storage.db import ensure_schema

pytest.importorskip("starlette", reason="the web extra is not installed")
import httpx

from smallops.web import auth
from smallops.web.app import create_app
from smallops.web.auth import LoginThrottle, TooManyFailures
from test_web import JSON_HEADERS, PASSWORD, TOKEN, csrf, make, serve

from live_server import serving_app


def test_the_throttle_counts_tries_over_a_sliding_window_and_a_right_one_takes_its_own_back():
    throttle = LoginThrottle(per_name=3, per_address=5, window=60)
    for second in range(3):
        throttle.attempt("dana", "10.0.0.1", now=second)
    with pytest.raises(TooManyFailures) as refused:
        throttle.attempt("Dana ", "10.0.0.2", now=10)  # the name, however it is typed
    assert refused.value.retry_after == pytest.approx(50)  # the first try ages out at 60
    throttle.attempt("ed", "10.0.0.1", now=11)  # another name from the same address: 4 of 5
    right = throttle.attempt("fay", "10.0.0.1", now=12)  # 5 of 5 ...
    throttle.succeeded("fay", "10.0.0.1", right)  # ... until it proves right: 4 of 5
    throttle.attempt("gus", "10.0.0.1", now=13)
    with pytest.raises(TooManyFailures):
        throttle.attempt("hal", "10.0.0.1", now=14)  # the address has had 5 wrong ones
    right = throttle.attempt("dana", None, now=60.5)  # the window moved on: 3 of 3
    throttle.succeeded("dana", None, right)  # a right password clears the name's count
    for second in (61, 62, 63):
        throttle.attempt("dana", None, now=second)


def test_a_refused_try_is_not_counted():
    """Tries refused by the limit cost nothing and count nothing: the window frees up on time."""
    throttle = LoginThrottle(per_name=2, per_address=100, window=60)
    throttle.attempt("dana", "10.0.0.1", now=0)
    throttle.attempt("dana", "10.0.0.1", now=1)
    for second in range(2, 60):
        with pytest.raises(TooManyFailures):
            throttle.attempt("dana", "10.0.0.1", now=second)
    throttle.attempt("dana", "10.0.0.1", now=60.5)


def test_a_guessed_password_is_refused_after_five_failures_even_when_right(tmp_path):
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    reviewers = {"dana": auth.hash_password(PASSWORD), "eli": auth.hash_password(PASSWORD)}
    client, _ = serve([wf], require_login=True, reviewers=reviewers)

    def log_in(name: str, password: str):
        form = {"csrf": csrf(client, "/login"), "name": name, "password": password, "next": "/"}
        return client.post("/login", data=form, follow_redirects=False)

    assert [log_in("dana", f"guess {i}").status_code for i in range(5)] == [401] * 5
    refused = log_in("dana", PASSWORD)
    assert refused.status_code == 429 and "too many failed logins" in refused.text
    assert 800 < int(refused.headers["retry-after"]) <= 901
    assert "try again in 15 minutes" in refused.text
    as_json = client.post("/login", json={"name": "dana", "password": PASSWORD})
    assert as_json.status_code == 429 and as_json.json()["hint"] == "try again in 15 minutes"
    assert log_in("eli", PASSWORD).status_code == 303  # other reviewers are not locked out
    assert client.get("/", headers=JSON_HEADERS).json()["reviewer"] == "eli"


def test_wrong_bearer_tokens_are_throttled_per_address(tmp_path):
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    client, _ = serve([wf], require_login=True, token=TOKEN)

    def ask(token: str):
        return client.get("/", headers={"Authorization": f"Bearer {token}"})

    assert {ask(TOKEN).status_code for _ in range(30)} == {200}  # right ones do not add up
    assert {ask(f"guess-{i}").status_code for i in range(20)} == {401}
    refused = ask(TOKEN)
    assert refused.status_code == 429 and "retry-after" in refused.headers


def test_a_changed_password_a_removed_reviewer_or_a_new_token_ends_their_sessions(tmp_path):
    import dataclasses

    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    reviewers = {"dana": auth.hash_password(PASSWORD), "eli": auth.hash_password(PASSWORD)}
    client, _ = serve([wf], require_login=True, reviewers=reviewers, token=TOKEN)
    cookies = {}
    for name, password in (("dana", PASSWORD), ("eli", PASSWORD), ("token", TOKEN)):
        client.cookies.clear()
        form = {"csrf": csrf(client, "/login"), "name": name, "password": password}
        assert client.post("/login", data=form, follow_redirects=False).status_code == 303
        cookies[name] = client.cookies[auth.SESSION_COOKIE]

    def who(name: str) -> int:
        client.cookies.clear()
        client.cookies[auth.SESSION_COOKIE] = cookies[name]
        return client.get("/", headers=JSON_HEADERS).status_code

    assert [who(n) for n in cookies] == [200, 200, 200]
    state = client.app.state.web
    # smallops.toml edited and the server restarted: dana has a new password, eli is gone,
    # and the review token was rotated.
    restarted = auth.Auth(
        True, reviewers={"dana": auth.hash_password("a new password")}, token="rotated-token-42"
    )
    client.app.state.web = dataclasses.replace(state, auth=restarted)
    assert [who(n) for n in cookies] == [401, 401, 401]
    client.app.state.web = state  # nothing changed: the same cookies work again
    assert [who(n) for n in cookies] == [200, 200, 200]


# Logins as a real client sends them: a uvicorn server, simultaneous connections.


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each scrypt the server runs (the real one), as the name of the thread that ran it."""
    auth._dummy()  # made once per process: not part of what a test counts
    calls: list[str] = []
    real = auth._scrypt

    def counted(*args: Any) -> bytes:
        calls.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(auth, "_scrypt", counted)
    return calls


@contextlib.contextmanager
def uvicorn_serving(tmp_path: Path) -> Iterator[str]:
    """The app with login required (dana's password), under uvicorn on 127.0.0.1."""
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    engine = wf.plan().writer.store.engine
    ensure_schema(engine)
    settings = Settings(root=tmp_path, reviewers={"dana": auth.hash_password(PASSWORD)})
    desk = ReviewDesk(engine, {wf.name: wf})
    app = create_app(desk, settings, require_login=True, secret_key=b"k" * 32, env={})
    with serving_app(app) as port:
        yield f"http://127.0.0.1:{port}"


def burst(base: str, bodies: list[dict[str, str]]) -> list[int]:
    """POST /login with each body, all at once on their own connections; the statuses."""

    async def send() -> list[int]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
            answers = await asyncio.gather(*(client.post("/login", json=b) for b in bodies))
        return [answer.status_code for answer in answers]

    return asyncio.run(send())


PASSWORD_THREADS = {f"smallops-password_{i}" for i in range(auth.PASSWORD_THREADS)}


def test_a_burst_of_60_simultaneous_logins_for_one_name_gets_at_most_5_password_checks(
    tmp_path, scrypt_calls
):
    with uvicorn_serving(tmp_path) as base:
        scrypt_calls.clear()  # dana's hash was made for the server
        statuses = burst(base, [{"name": "dana", "password": f"guess {i}"} for i in range(60)])
        assert len(scrypt_calls) <= 5
        assert statuses.count(401) == len(scrypt_calls) and statuses.count(429) >= 55
        right = burst(base, [{"name": "dana", "password": PASSWORD}])
        assert right == [429] and len(scrypt_calls) <= 5  # refused before any check
    assert set(scrypt_calls) <= PASSWORD_THREADS  # checked on the pool, not any worker thread


def test_a_burst_of_200_simultaneous_logins_from_one_address_gets_at_most_20_password_checks(
    tmp_path, scrypt_calls
):
    with uvicorn_serving(tmp_path) as base:
        scrypt_calls.clear()  # dana's hash was made for the server
        names = [{"name": f"user{i}", "password": "guess"} for i in range(200)]
        statuses = burst(base, names)
    assert len(scrypt_calls) <= 20
    assert statuses.count(401) == len(scrypt_calls) and statuses.count(429) >= 180
    assert set(scrypt_calls) <= PASSWORD_THREADS


# `smallops serve` as its own process.


@contextlib.contextmanager
def smallops_serve(tmp_path: Path, *options: str) -> Iterator[tuple[str, int]]:
    """`smallops serve --login` on a project whose reviewers user0..user29 share PASSWORD;
    (its URL, its process id). What it prints is in tmp_path / "stdout.txt" once it stops."""
    project = tmp_path / "project"
    project.mkdir(parents=True)
    stored = auth.hash_password(PASSWORD)
    reviewers = "\n".join(f'user{i} = "{stored}"' for i in range(30))
    (project / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "sqlite:///.smallops/log.db"\n\n[reviewers]\n{reviewers}\n'
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["-p", str(project), "serve", "--login", "--port", str(port), *options]
    env = {k: v for k, v in os.environ.items() if k != "SMALLOPS_FORWARDED_ALLOW_IPS"}
    stdout = (tmp_path / "stdout.txt").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", "from smallops.cli import main; main()", *command],
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/login", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "smallops serve did not start"
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        stdout.close()


def log_in(url: str, name: str, password: str, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    body = {"name": name, "password": password}
    return httpx.post(url + "/login", json=body, headers=headers, timeout=60).status_code


def test_x_forwarded_for_is_ignored_unless_the_operator_names_the_proxy(tmp_path):
    """A client cannot pass for 21 addresses by sending 21 X-Forwarded-For headers."""
    with smallops_serve(tmp_path) as (url, _):
        statuses = [log_in(url, f"x{i}", "guess", f"203.0.113.{i}") for i in range(21)]
    assert statuses == [401] * 20 + [429]


def test_x_forwarded_for_names_the_client_when_it_comes_from_the_named_proxy(tmp_path):
    with smallops_serve(tmp_path, "--forwarded-allow-ips", "127.0.0.1") as (url, _):
        statuses = [log_in(url, f"x{i}", "guess", "203.0.113.7") for i in range(21)]
        assert statuses == [401] * 20 + [429]
        assert log_in(url, "x99", "guess", "203.0.113.8") == 401  # another client, its own count
        assert log_in(url, "user0", PASSWORD, "203.0.113.7") == 429


def test_serve_on_a_public_address_without_a_named_proxy_says_clients_behind_one_share_a_throttle(
    tmp_path,
):
    """One line at start, only when the server can be reached from elsewhere and trusts no
    proxy's X-Forwarded-For: behind a proxy one client's wrong tries would lock out everyone."""
    runs = {
        "public": ("--host", "0.0.0.0"),
        "proxied": ("--host", "0.0.0.0", "--forwarded-allow-ips", "127.0.0.1"),
        "local": (),
    }
    for name, options in runs.items():
        with smallops_serve(tmp_path / name, *options) as (url, _):
            assert log_in(url, "user0", PASSWORD) == 200
    said = {name: (tmp_path / name / "stdout.txt").read_text().splitlines() for name in runs}
    assert all(lines[0].startswith("smallops review queue at http://") for lines in said.values())
    assert len(said["proxied"]) == len(said["local"]) == 1
    [note] = said["public"][1:]
    assert "--forwarded-allow-ips" in note and "share" in note and "20 wrong" in note


def post_raw(url: str, path: str, mib: int, *, chunked: bool) -> int:
    """The status of a POST of `mib` MiB, sent with a Content-Length or in chunks without one,
    on a connection of its own; the body is sent in a thread while the answer is read, since a
    server may answer before it has read the body."""
    host, port = url.removeprefix("http://").split(":")
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {mib * 2**20}"
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    piece = b"x" * 2**20
    with socket.create_connection((host, int(port)), timeout=120) as connection:

        def send_body() -> None:
            with contextlib.suppress(OSError):
                for _ in range(mib):
                    connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                connection.sendall(b"0\r\n\r\n" if chunked else b"")

        connection.sendall(f"{head}{framing}\r\n\r\n".encode())
        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        answer = b""
        while b"\r\n" not in answer:
            answer += connection.recv(4096) or b"\r\n"
        status = answer.split(b"\r\n")[0].decode()
    sender.join(120)
    return int(status.split()[1]) if status.startswith("HTTP/1.1 ") else 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_150_mb_login_body_is_a_413_and_does_not_grow_the_server(tmp_path):
    """It took the server from 80 MB to 829 MB: now it is refused before it is read (declared)
    or as soon as it passes 1 MiB (chunked), and what is not read is not kept."""
    with smallops_serve(tmp_path) as (url, pid):
        assert log_in(url, "user0", PASSWORD) == 200  # everything loaded
        before = rss_mib(pid)
        declared = post_raw(url, "/login", 150, chunked=False)
        chunked = post_raw(url, "/login", 150, chunked=True)
        grown = rss_mib(pid) - before
        assert log_in(url, "user1", PASSWORD) == 200  # and it still serves
    assert declared == chunked == 413
    assert grown < 20, f"the server grew by {grown:.0f} MiB"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_thirty_logins_leave_the_server_no_more_than_a_few_password_checks_of_memory(tmp_path):
    """scrypt's 16 MiB stays in the thread that ran it: 30 logins, 10 at a time, must not grow
    the server by 30 x 16 MiB (it grew by 450 MB when any worker thread could run one)."""
    with smallops_serve(tmp_path) as (url, pid):
        assert log_in(url, "user0", PASSWORD) == 200  # everything loaded, one check's memory
        before = rss_mib(pid)
        for wave in range(3):
            names = [f"user{wave * 10 + i}" for i in range(10)]
            with ThreadPoolExecutor(10) as pool:
                statuses = list(pool.map(lambda n: log_in(url, n, PASSWORD), names))
            assert statuses == [200] * 10
        grown = rss_mib(pid) - before
    assert grown < 16 * (auth.PASSWORD_THREADS + 2), f"the server grew by {grown:.0f} MiB"
