"""Two `smallops gateway` processes with one smallops.toml, one Postgres log and one Redis, in
front of the provider emulator, driven alternately with the official OpenAI SDK: the limits,
budgets, breaker and keys of one are those of the other, and both log into the one log.

Each test has its own Postgres schema, and its own route, key and model names (a random tag),
so what it leaves in Redis (limits, breakers) is never met by another run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from smallops.gateway.keys import CACHE_TTL
from smallops.storage.db import normalise_url

from conftest import _postgres_url, smallops
from emulators import ModelServer, ok, respond, status

REDIS_URL = "redis://127.0.0.1:6379/0"
COMMAND = [sys.executable, "-c", "from smallops.cli import main; main()"]
PRICE = 100.0  # USD per million tokens, in and out: the emulator's 25 + 15 tokens cost $0.004
MESSAGES = [{"role": "user", "content": "hi"}]
# The most one request here reserves: its body (under 150 bytes) priced as prompt at 3 bytes a
# token plus 16, and max_tokens=20 of answer.
RESERVED = (150 // 3 + 16 + 20) * PRICE / 1e6


def _redis_reason() -> str | None:
    """Why Redis cannot be used here, or None."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:
        return f"no Redis at {REDIS_URL} ({type(exc).__name__}): the instances share it"
    return None


class Endpoint:
    """A gateway at a port, called through the SDK, and the run ids of the requests it answered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.run_ids: list[str] = []

    def call(self, key: str, model: str, **options: Any) -> tuple[int, str | None, httpx.Headers]:
        """One request through the SDK: (HTTP status, error code, headers)."""
        client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=MESSAGES, **options
            )
            raw.parse()
            found: tuple[int, str | None, httpx.Headers] = (200, None, raw.headers)
        except openai.APIStatusError as error:
            found = (error.status_code, error.code, error.response.headers)
        finally:
            client.close()
        self._note(found[2])
        return found

    async def acall(
        self, client: openai.AsyncOpenAI, key: str, model: str, **options: Any
    ) -> tuple[int, str | None]:
        """The same, through an async client of this instance's, with the key given."""
        try:
            raw = await client.with_options(api_key=key).chat.completions.with_raw_response.create(
                model=model, messages=MESSAGES, **options
            )
            raw.parse()
            self._note(raw.headers)
            return 200, None
        except openai.APIStatusError as error:
            self._note(error.response.headers)
            return error.status_code, error.code

    def aclient(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="unused", max_retries=0)

    def _note(self, headers: httpx.Headers) -> None:
        if "x-smallops-run-id" in headers:  # every request past its key and route is a run
            self.run_ids.append(headers["x-smallops-run-id"])


class Instance(Endpoint):
    """One `smallops gateway --port P` process."""

    def __init__(self, project: Path, port: int, env: dict[str, str]) -> None:
        super().__init__(port)
        self.process = subprocess.Popen(
            [*COMMAND, "-p", str(project), "gateway", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.stderr: str | None = None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.process.communicate()[1]
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 401:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start listening"
            time.sleep(0.1)

    def stop(self) -> str:
        """SIGTERM: the process stops once its log is drained; its stderr."""
        if self.stderr is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.stderr = self.process.communicate(timeout=20)[1]
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.stderr = self.process.communicate()[1]
        return self.stderr


class Pair:
    """Two instances of one project, and what the tests need to read their shared log."""

    def __init__(self, project: Path, database_url: str, tag: str, env: dict[str, str]) -> None:
        self.project = project
        self.tag = tag
        self.env = env
        self.engine = create_engine(normalise_url(database_url, project))
        self.instances = [Instance(project, _free_port(), env) for _ in range(2)]
        for instance in self.instances:
            instance.wait_ready()

    def route(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def key(self, capsys: pytest.CaptureFixture[str], name: str, *options: str) -> str:
        """A key made with `smallops gateway keys create` (in this process, for speed; named
        per run, since Redis keeps a key's limit by its name)."""
        code, out, err = smallops(
            capsys, "-p", str(self.project), "gateway", "keys", "create", name, *options
        )
        assert code == 0, err
        return out.strip()

    def cli(self, *args: str) -> str:
        """`smallops -p PROJECT ARGS...` in a process of its own: its output."""
        done = subprocess.run(
            [*COMMAND, "-p", str(self.project), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def one_log(self) -> list[dict[str, Any]]:
        """The runs of both, once every request either answered (a run id in its headers) is
        one run in the one log, and the log holds nothing else."""
        answered = {rid for instance in self.instances for rid in instance.run_ids}
        total = sum(len(instance.run_ids) for instance in self.instances)
        assert len(answered) == total  # no run id twice
        deadline = time.monotonic() + 15  # each instance writes its runs just after answering
        while True:
            with self.engine.connect() as connection:
                query = text("SELECT id, caller, workflow, error_type, cost_usd FROM runs")
                rows = [dict(row) for row in connection.execute(query).mappings()]
            if len(rows) >= total or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(rows) == total and {r["id"] for r in rows} == answered
        return rows


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, _server: ModelServer) -> Iterator[Pair]:
    """Two gateways sharing a fresh Postgres schema and Redis, in front of the emulator; for
    the module, since each takes seconds to start. They are stopped at the end with SIGTERM,
    and must exit as it asks, their logs drained."""
    reason = _redis_reason()
    if reason:
        pytest.skip(reason)
    schema = _postgres_url()  # a fresh schema, dropped at the end; skips without Postgres
    database_url = next(schema)
    project = tmp_path_factory.mktemp("instances")
    tag = uuid.uuid4().hex[:10]
    routes = {
        f"chat-{tag}": f'model = "emu:m-{tag}"\nretries = 0\n',
        f"limited-{tag}": f'model = "emu:m-{tag}"\nrate_limit = "4/minute"\n',
        f"capped-{tag}": f'model = "emu:m-{tag}"\ndaily_usd = 0.03\n',
        f"fragile-{tag}": f'model = "emu:broken-{tag}"\nretries = 0\n',
    }
    (project / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "{database_url}"\nredis_url = "{REDIS_URL}"\n'
        f'[providers.emu]\nkind = "openai"\nbase_url = "{_server.openai_base_url}"\n'
        'api_key_env = "EMU_KEY"\n'
        f'[prices."emu:m-{tag}"]\ninput = {PRICE}\noutput = {PRICE}\n'
        + "".join(f"[gateway.routes.{name}]\n{body}" for name, body in routes.items())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMALLOPS_")}
    env.update(EMU_KEY="sk-upstream-" + uuid.uuid4().hex, PYTHONUNBUFFERED="1")
    running = Pair(project, database_url, tag, env)
    try:
        yield running
        for instance in running.instances:
            err = instance.stop()
            assert instance.process.returncode == 128 + signal.SIGTERM, err
    finally:
        for instance in running.instances:
            instance.stop()
        running.engine.dispose()
        next(schema, None)


@pytest.fixture
def upstream(emulator: ModelServer) -> ModelServer:
    """The emulator, failing every request for a model whose name starts with broken-."""
    emulator.default = respond(
        lambda body, _: status(500) if str(body["model"]).startswith("broken-") else ok()
    )
    return emulator


@pytest.mark.postgres
def test_a_keys_and_a_routes_rate_limit_hold_across_both_instances(pair, capsys):
    """A key of 5/minute, called alternately through both: 5 answers, then 429 with
    Retry-After from whichever instance gets the next; the route's 4/minute, shared by two keys
    each on its own instance, the same."""
    one, two = pair.instances
    paced = f"paced-{pair.tag}"
    key, chat = pair.key(capsys, paced, "--rpm", "5"), pair.route("chat")
    assert [pair.instances[i % 2].call(key, chat)[0] for i in range(5)] == [200] * 5
    for instance in (two, one):  # the 6th and 7th: each instance counts the other's five
        code, error, headers = instance.call(key, chat)
        assert (code, error) == (429, "rate_limit_exceeded")
        assert 1 <= int(headers["retry-after"]) <= 60

    names = [f"first-{pair.tag}", f"second-{pair.tag}"]
    first, second = (pair.key(capsys, name) for name in names)
    limited = pair.route("limited")
    turns = [(one, first), (two, second)] * 2
    assert [instance.call(key, limited)[0] for instance, key in turns] == [200] * 4
    for instance, key in ((one, first), (two, second)):
        code, error, headers = instance.call(key, limited)
        assert (code, error) == (429, "rate_limit_exceeded")
        assert 1 <= int(headers["retry-after"]) <= 60

    rows = pair.one_log()
    throttled = [r["caller"] for r in rows if r["error_type"] == "throttled"]
    assert sorted(throttled) == sorted([paced, paced, *names])
    served = [r["caller"] for r in rows if r["error_type"] is None]
    assert sorted(served) == sorted([paced] * 5 + names * 2)


@pytest.mark.postgres
def test_a_budget_is_exhausted_across_both_instances(pair, capsys, upstream):
    """A key's daily $0.03, asked by 8 concurrent requests split between the instances, then
    alternately: both answer 429 budget_exhausted, and what the log says was spent stays within
    one request's reservation of the cap. The route's budget, spent by two keys each on its own
    instance, the same."""

    def exhaust(keys: list[str], route: str) -> None:
        async def burst() -> list[tuple[int, str | None]]:
            one, two = pair.instances
            async with one.aclient() as first, two.aclient() as second:
                turns = [(one, first, keys[0]), (two, second, keys[1])] * 4
                return await asyncio.gather(
                    *(i.acall(c, k, route, max_tokens=20) for i, c, k in turns)
                )

        codes = asyncio.run(burst())
        assert set(codes) <= {(200, None), (429, "budget_exhausted")}
        assert (429, "budget_exhausted") in codes
        time.sleep(0.3)  # the burst's reservations are settled to the real costs
        for _ in range(10):  # room the burst's reservations held may be free again
            answers = [pair.instances[i].call(keys[i], route, max_tokens=20)[:2] for i in (0, 1)]
            if answers == [(429, "budget_exhausted")] * 2:
                break
            time.sleep(0.2)
        assert answers == [(429, "budget_exhausted")] * 2

    spender = f"spender-{pair.tag}"
    key = pair.key(capsys, spender, "--daily-usd", "0.03")
    exhaust([key, key], pair.route("chat"))
    teams = [f"north-{pair.tag}", f"south-{pair.tag}"]
    exhaust([pair.key(capsys, name) for name in teams], pair.route("capped"))

    rows = [r for r in pair.one_log() if r["caller"] in {spender, *teams}]
    served = [r for r in rows if r["error_type"] is None]
    assert len(served) == len(upstream.requests)  # a refused request never reached it
    for names in ({spender}, set(teams)):
        spent = sum(r["cost_usd"] for r in served if r["caller"] in names)
        assert 0.03 - RESERVED < spent <= 0.03 + RESERVED, (names, spent)
    refused = {r["caller"] for r in rows if r["error_type"] == "budget_exhausted"}
    assert refused == {spender, *teams}
    time.sleep(0.2)  # guard events are written by a thread of their own
    with pair.engine.connect() as connection:
        query = text(
            """SELECT "key" FROM guard_events WHERE guard = 'budget' AND "after" = 'exhausted'"""
        )
        reported = connection.execute(query).scalars().all()
    budgets = {f"gateway-key:{spender}", pair.route("gateway:capped")}
    for budget in budgets:  # once per period and instance, not once per refused request
        assert 1 <= reported.count(budget) <= 2, reported


@pytest.mark.postgres
def test_a_key_revoked_from_the_command_line_is_refused_by_both_within_the_cache_ttl(pair, capsys):
    """Both instances have the key cached as valid; `smallops gateway keys revoke`, in a
    process of its own; each refuses the key (401) within the key cache's TTL."""
    leaver = f"leaver-{pair.tag}"
    key, chat = pair.key(capsys, leaver), pair.route("chat")
    assert [instance.call(key, chat)[0] for instance in pair.instances] == [200, 200]
    assert f"revoked {leaver}" in pair.cli("gateway", "keys", "revoke", leaver)
    revoked_at = time.monotonic()
    for instance in pair.instances:
        while True:
            code, error, _ = instance.call(key, chat)
            waited = time.monotonic() - revoked_at
            if code == 401:
                break
            assert code == 200 and waited < CACHE_TTL + 2, (code, waited)
            time.sleep(0.1)
        assert error == "invalid_api_key"
    assert [instance.call(key, chat)[0] for instance in pair.instances] == [401, 401]
    served = [r for r in pair.one_log() if r["caller"] == leaver]
    assert served and all(r["error_type"] is None for r in served)


@pytest.mark.postgres
def test_a_breaker_opened_through_both_instances_is_open_on_each(pair, capsys, upstream):
    """Ten upstream failures, five through each instance (neither alone reaches the breaker's
    ten calls): the model's breaker opens, and both answer 503 breaker_open without asking the
    upstream again."""
    fragile = f"fragile-{pair.tag}"
    key, route = pair.key(capsys, fragile), pair.route("fragile")
    codes = [pair.instances[i % 2].call(key, route)[0] for i in range(10)]
    assert all(code >= 500 for code in codes), codes
    for instance in pair.instances:
        assert instance.call(key, route)[:2] == (503, "breaker_open")
    assert len(upstream.requests) == 10
    errors = [r["error_type"] for r in pair.one_log() if r["caller"] == fragile]
    assert sorted(errors).count("breaker_open") == 2 and len(errors) == 12


def test_while_redis_does_not_answer_each_process_keeps_its_own_limit_and_the_runs_say_so(
    tmp_path, emulator, monkeypatch
):
    """Redis refusing connections: requests are still answered, under this process's own copy
    of the limit (the third of a 2/minute route is refused), and each run records that the
    rate limit and the breaker were degraded, and why."""
    import json

    from smallops import Settings
    from smallops.gateway.app import Gateway
    from smallops.gateway.keys import create_key
    from smallops.storage.writer import writer_for

    from live_server import serving_app

    monkeypatch.setenv("EMU_KEY", "sk-upstream-" + uuid.uuid4().hex)
    down = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    (tmp_path / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "sqlite:///{tmp_path / "log.db"}"\nredis_url = "{down}"\n'
        f'[providers.emu]\nkind = "openai"\nbase_url = "{emulator.openai_base_url}"\n'
        'api_key_env = "EMU_KEY"\n'
        '[gateway.routes.limited]\nmodel = "emu:model-a"\nrate_limit = "2/minute"\n'
    )
    settings = Settings.load(tmp_path)
    app = Gateway(settings)
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    key = create_key(engine, "team")[0]
    with serving_app(app) as port:
        codes = [Endpoint(port).call(key, "limited")[:2] for _ in range(3)]
    assert codes == [(200, None), (200, None), (429, "rate_limit_exceeded")]
    assert writer_for(settings.log).flush(10)
    with engine.connect() as connection:
        guards = connection.execute(text("SELECT guards FROM runs ORDER BY id")).scalars().all()
    engine.dispose()
    decisions = [(json.loads(g) if isinstance(g, str) else g) or [] for g in guards]
    assert len(decisions) == 3
    for run in decisions[:2]:
        degraded = {d["guard"]: d["reason"] for d in run if d["decision"] == "degraded"}
        assert set(degraded) == {"rate_limit", "breaker"}, run
        assert f"{down} unreachable" in degraded["rate_limit"]
        assert "this process's limit" in degraded["rate_limit"]
