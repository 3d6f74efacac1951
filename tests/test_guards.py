"""Guards against a bad day: rate limits, the circuit breaker, budgets, the secondary model.

All against real servers on 127.0.0.1: the provider emulator, Postgres or SQLite, and Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from smallops import BreakerConfig, Budget, FakeProvider, Settings, Workflow, secondary
from smallops.config import Price
from smallops.providers.base import ProviderError
from smallops.resilience.guards import breaker_failure
from smallops.storage.schema import guard_events, runs
from smallops.testing import recorded_runs

from emulators import delay, disconnect, ok, status
from models import GOOD, Triage

REDIS_URL = "redis://127.0.0.1:6379/0"
INPUTS = {"subject": "Invoice", "body": "Where is my May invoice?"}
FAST_BREAKER = BreakerConfig(failure_rate=0.5, min_calls=10, window=5, open_for=1.5, probes=3)


def _redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL).ping())
    except Exception:
        return False


needs_redis = pytest.mark.skipif(not _redis_available(), reason="no Redis at 127.0.0.1:6379")


Change = tuple[str | None, str]  # a guard event's (before, after)


def events(wf: Workflow, guard: str, until: Callable[[list[Change]], bool]) -> list[Change]:
    """The guard's events, oldest first, once `until` holds for them (or after 10 s).

    Events are written by short background threads, so they can land a moment after the call
    that caused them: wait for the ones a test expects instead of sleeping a fixed time.
    """
    deadline = time.monotonic() + 10
    while True:
        with wf.plan().writer.store.engine.connect() as connection:
            rows = connection.execute(
                select(guard_events.c.before, guard_events.c.after)
                .where(guard_events.c.guard == guard)
                .order_by(guard_events.c.at)
            ).all()
        found = [(row.before, row.after) for row in rows]
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def states(changes: list[Change]) -> list[str]:
    return [state for _, state in changes]


def test_at_the_rate_limit_a_call_goes_to_the_fallback_after_its_wait(make_workflow, emulator):
    emulator.default = ok(GOOD)
    wf = make_workflow(rate_limit="5/second", rate_wait=0)
    statuses = [wf.run(**INPUTS).status for _ in range(7)]
    assert statuses.count("pending_review") == 5 and statuses.count("queued_for_human") == 2
    throttled = [r for r in recorded_runs(wf) if r["error_type"] == "throttled"]
    assert len(throttled) == 2 and throttled[0]["guards"][0]["decision"] == "refused"
    assert len(emulator.requests) == 5


def test_a_call_waits_for_room_under_the_rate_limit(make_workflow, emulator):
    emulator.default = ok(GOOD)
    wf = make_workflow(rate_limit="2/second", rate_wait=3)
    started = time.perf_counter()
    assert [wf.run(**INPUTS).status for _ in range(3)] == ["pending_review"] * 3
    assert time.perf_counter() - started >= 0.5
    waited = recorded_runs(wf)[-1]["guards"]
    assert waited[0]["guard"] == "rate_limit" and waited[0]["decision"] == "waited"


def test_the_breaker_opens_sends_calls_straight_to_the_fallback_then_probes_close_it(
    make_workflow, emulator
):
    emulator.default = status(500)
    wf = make_workflow(breaker=FAST_BREAKER, retries=0)
    for _ in range(10):
        assert wf.run(**INPUTS).error == "server_error"
    sent = len(emulator.requests)
    started = time.perf_counter()
    refused = wf.run(**INPUTS)
    assert refused.error == "breaker_open" and time.perf_counter() - started < 0.05
    assert len(emulator.requests) == sent  # the provider was not called
    emulator.default = ok(GOOD)
    time.sleep(1.6)
    assert [wf.run(**INPUTS).status for _ in range(4)] == ["pending_review"] * 4
    changes = events(wf, "breaker", until=lambda found: len(found) >= 3)
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_probe_opens_the_breaker_again(make_workflow, emulator):
    emulator.default = status(503)
    wf = make_workflow(breaker=FAST_BREAKER, retries=0)
    for _ in range(10):
        wf.run(**INPUTS)
    time.sleep(1.6)
    assert wf.run(**INPUTS).error == "server_error"  # the probe fails
    assert wf.run(**INPUTS).error == "breaker_open"
    changes = events(wf, "breaker", until=lambda found: len(found) >= 3)
    assert changes[-1] == ("half_open", "open")


def test_a_provider_outage_in_a_1000_call_run_loses_nothing(make_workflow, emulator):
    """Every call fails for 10 s in the middle: the breaker opens, the calls of the outage go to
    the fallback without waiting on timeouts, probes close it after, and 1,000 of 1,000 inputs
    are accounted for."""
    emulator.default = delay(0.005, then=ok(GOOD))
    wf = make_workflow(breaker=FAST_BREAKER, retries=1, timeout=2)
    outage = threading.Timer(7.5, lambda: setattr(emulator, "default", status(500)))
    recovery = threading.Timer(
        17.5, lambda: setattr(emulator, "default", delay(0.005, then=ok(GOOD)))
    )

    async def all_calls() -> list[Any]:
        start = time.monotonic()

        async def one(i: int) -> Any:  # call i starts at 25 ms * i: 1,000 calls over 25 s
            await asyncio.sleep(max(0.0, start + 0.025 * i - time.monotonic()))
            return await wf.arun(subject=f"s{i}", body="b")

        return list(await asyncio.gather(*(one(i) for i in range(1000))))

    outage.start()
    recovery.start()
    results = asyncio.run(all_calls())
    outage.join()
    recovery.join()
    statuses = Counter(r.status for r in results)
    assert sum(statuses.values()) == 1000 and set(statuses) <= {
        "pending_review",
        "queued_for_human",
    }
    runs_ = recorded_runs(wf)
    assert len(runs_) == 1000 and {r["id"] for r in runs_} == {r.run_id for r in results}
    # refused before any request: no timeout, no request, no wait
    skipped = [r for r in runs_ if r["error_type"] == "breaker_open" and r["attempt_count"] == 0]
    assert len(skipped) > 100 and max(r["latency_ms"] for r in skipped) < 50
    assert statuses["pending_review"] > 500
    changes = events(wf, "breaker", until=lambda found: found[-1:] == [("half_open", "closed")])
    assert changes[0] == ("closed", "open") and changes[-1] == ("half_open", "closed")


def test_a_429_storm_with_retry_after_is_ridden_out_within_the_deadline(make_workflow, emulator):
    emulator.script(*[status(429, retry_after=0.2)] * 4, ok(GOOD))
    result = make_workflow(retries=5, deadline=5, breaker=None).run(**INPUTS)
    assert result.status == "pending_review" and result.attempts == 5


def test_a_429_burst_with_retry_after_is_waited_out_under_the_default_breaker(
    make_workflow, emulator
):
    """Eight concurrent calls meet 1.5 s of 429s that say `Retry-After: 1`: the default breaker
    does not open on them, and all eight are answered after the wait, none sent to the fallback.
    """
    emulator.default = status(429, retry_after=1)
    wf = make_workflow()  # the default breaker
    wf.plan()  # so the calls start with the burst
    burst_over = threading.Timer(1.5, lambda: setattr(emulator, "default", ok(GOOD)))

    async def eight() -> list[Any]:
        return list(await asyncio.gather(*(wf.arun(**INPUTS) for _ in range(8))))

    started = time.perf_counter()
    burst_over.start()
    results = asyncio.run(eight())
    burst_over.join()
    assert [r.status for r in results] == ["pending_review"] * 8
    assert time.perf_counter() - started >= 1.5
    rate_limited = [a for r in recorded_runs(wf) for a in r["attempts"] if a["status_code"] == 429]
    assert len(rate_limited) > BreakerConfig().min_calls  # enough to have opened it before
    guards = wf.plan().guards
    assert guards is not None and guards.breaker is not None and guards.breaker_config
    assert guards.breaker.state(guards.breaker_key, guards.breaker_config)["state"] == "closed"
    assert events(wf, "breaker", until=lambda found: True) == []  # it never left "closed"


OUTAGES = {
    "server error": status(500),
    "timeout": delay(2),
    "dropped connection": disconnect(),
    "429 without Retry-After": status(429),
    "429 asking for longer than the deadline": status(429, retry_after=60),
}


@pytest.mark.parametrize("failure", OUTAGES.values(), ids=OUTAGES.keys())
def test_real_outages_still_open_the_breaker(make_workflow, emulator, failure):
    emulator.default = failure
    config = BreakerConfig(failure_rate=0.5, min_calls=4, window=30, open_for=30)
    wf = make_workflow(breaker=config, retries=0, timeout=0.3, deadline=5)
    first = [wf.run(**INPUTS).error for _ in range(4)]
    assert "breaker_open" not in first and len(emulator.requests) == 4
    assert wf.run(**INPUTS).error == "breaker_open" and len(emulator.requests) == 4


@pytest.mark.parametrize(
    ("kind", "retry_after", "time_left", "counts"),
    [
        ("rate_limited", 1.0, 10.0, False),  # the server says when: wait, it is not down
        ("rate_limited", 30.0, 10.0, True),  # later than the call can wait
        ("rate_limited", None, 10.0, True),  # no word on when
        ("server_error", None, 10.0, True),
        ("timeout", None, 10.0, True),
        ("connection_error", None, 10.0, True),
        ("bad_response", None, 10.0, True),
        ("bad_request", None, 10.0, False),  # our request, not the endpoint
        ("auth_error", None, 10.0, False),
    ],
)
def test_which_failures_count_against_the_breaker(kind, retry_after, time_left, counts):
    error = ProviderError(kind, "x", retry_after=retry_after)
    assert breaker_failure(error, time_left) is counts
    assert breaker_failure(None, time_left) is False


def test_the_secondary_model_answers_when_the_primary_is_down(make_workflow, emulator):
    """OpenAI is down; the work goes to Anthropic, and both calls are on record."""
    emulator.script(status(500), status(500))
    wf = make_workflow(fallback=secondary("anthropic:claude-sonnet-4-6"), retries=1)
    result = wf.run(**INPUTS)
    assert result.status == "pending_review" and result.model == "claude-sonnet-4-6"
    paths = [r.path for r in emulator.requests]
    assert paths == ["/v1/chat/completions", "/v1/chat/completions", "/v1/messages"]
    primary, backup = recorded_runs(wf)
    assert primary["status"] == "fallback_secondary" and primary["error_type"] == "server_error"
    assert backup["provider"] == "anthropic" and backup["id"] == result.run_id


def _priced_settings(tmp_path: Path, database_url: str) -> Settings:
    # $1 per million input tokens, $10 per million output tokens: a call costs about $0.001.
    return Settings(
        root=tmp_path,
        database_url=database_url,
        prices={"fake:priced": Price(input=1.0, output=10.0)},
    )


def test_a_budget_warns_at_80_percent_and_sends_calls_to_the_fallback_at_its_cap(
    tmp_path, database_url
):
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    answer = json.dumps({**GOOD, "summary": "x" * 60})
    wf = Workflow(
        "budgeted",
        model="fake:priced",
        prompt="p.prompt",
        output=Triage,
        fallback="review",
        provider=FakeProvider(lambda _: answer),
        max_tokens=100,
        budget=Budget(daily=0.01),
        base_dir=tmp_path,
        settings=_priced_settings(tmp_path, database_url),
    )
    statuses = [wf.run(text="hello " * 20).status for _ in range(60)]
    assert "queued_for_human" in statuses
    runs_ = recorded_runs(wf)
    spent = sum(r["cost_usd"] or 0 for r in runs_)
    assert spent <= 0.01
    refused = [r for r in runs_ if r["error_type"] == "budget_exhausted"]
    assert refused and "daily budget of $0.01 spent" in refused[0]["error_message"]
    changes = events(
        wf, "budget", until=lambda found: {"warning", "exhausted"} <= set(states(found))
    )
    kinds = states(changes)
    assert kinds[0] == "warning" and "exhausted" in kinds


BUDGET_WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from models import Triage
    from smallops import Budget, FakeProvider, Settings, Workflow
    from smallops.config import Price

    root = Path(sys.argv[1])
    answer = json.dumps({"category": "billing", "urgency": "low", "summary": "x" * 60})
    settings = Settings(root=root, database_url=sys.argv[2],
                        prices={"fake:priced": Price(input=1.0, output=10.0)})
    wf = Workflow("budgeted", model="fake:priced", prompt="p.prompt", output=Triage,
                  fallback="review", provider=FakeProvider(lambda _: answer), max_tokens=100,
                  budget=Budget(daily=0.02), base_dir=root, settings=settings)
    for _ in range(40):
        wf.run(text="hello " * 20)
""")


def test_concurrent_processes_cannot_overshoot_a_budget(tmp_path, database_url):
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    script = tmp_path / "worker.py"
    script.write_text(BUDGET_WORKER)
    tests = str(Path(__file__).parent)
    workers = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path), database_url, tests])
        for _ in range(4)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0] * 4
    from smallops.storage.db import get_engine, normalise_url

    engine = get_engine(normalise_url(database_url, tmp_path))
    with engine.connect() as connection:
        spent, calls, priciest = connection.execute(
            select(
                func.sum(runs.c.cost_usd), func.count(runs.c.cost_usd), func.max(runs.c.cost_usd)
            ).where(runs.c.status != "queued_for_human")
        ).one()
    assert calls > 5 and spent <= 0.02 + priciest


RATE_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from smallops import FakeProvider, Settings, Workflow

    root = Path(sys.argv[1])
    settings = Settings(root=root, database_url=sys.argv[2], redis_url=sys.argv[3])
    wf = Workflow(sys.argv[4], model="fake:x", prompt="p.prompt", fallback="review",
                  provider=FakeProvider(lambda _: "ok"), rate_limit="120/minute", rate_wait=0,
                  base_dir=root, settings=settings)
    start = float(sys.argv[5])
    time.sleep(max(0.0, start - time.time()))
    admitted = sum(wf.run(text="x").status == "pending_review" for _ in range(60))
    print(admitted)
""")


@needs_redis
def test_four_processes_sharing_redis_share_one_rate_limit(tmp_path):
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    script = tmp_path / "worker.py"
    script.write_text(RATE_WORKER)
    name = f"shared-{uuid.uuid4().hex[:8]}"
    start = str(time.time() + 3)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(tmp_path),
                f"sqlite:///{tmp_path}/log{i}.db",
                REDIS_URL,
                name,
                start,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    admitted = [int(w.communicate(timeout=120)[0].strip()) for w in workers]
    assert abs(sum(admitted) - 120) <= 1, admitted
    assert all(0 < n < 60 for n in admitted) or sum(admitted) == 120


BREAKER_WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from smallops import BreakerConfig, FakeProvider, ProviderError, Settings, Workflow

    root, name, role = Path(sys.argv[1]), sys.argv[3], sys.argv[4]

    def answer(_):
        return ProviderError("server_error", "down") if role == "failing" else "fine"

    wf = Workflow(name, model="fake:x", prompt="p.prompt", fallback="review", retries=0,
                  provider=FakeProvider(answer), base_dir=root,
                  breaker=BreakerConfig(min_calls=10, open_for=60),
                  settings=Settings(root=root, database_url=f"sqlite:///{root}/{role}.db",
                                    redis_url=sys.argv[2]))
    calls = 12 if role == "failing" else 1
    print(" ".join(wf.run(text="x").error or "none" for _ in range(calls)))
""")


@needs_redis
def test_a_breaker_opened_by_one_process_is_open_for_the_others(tmp_path):
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    script = tmp_path / "worker.py"
    script.write_text(BREAKER_WORKER)
    name = f"shared-{uuid.uuid4().hex[:8]}"

    def run(role: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path), REDIS_URL, name, role],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert run("failing")[-1] == "breaker_open"
    assert [run("healthy")[0] for _ in range(3)] == ["breaker_open"] * 3


def test_status_shows_breaker_limits_budget_and_queue(tmp_path, capsys):
    from conftest import smallops

    (tmp_path / "smallops.toml").write_text('[smallops]\ndatabase_url = "sqlite:///log.db"\n')
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "p.prompt").write_text("[user]\n{{ text }}")
    (tmp_path / "workflows" / "guarded.py").write_text(
        textwrap.dedent("""
        from smallops import Budget, FakeProvider, Workflow
        from smallops.config import Price

        guarded = Workflow("guarded", model="fake:x", prompt="p.prompt", fallback="review",
                           provider=FakeProvider(lambda _: "ok"), rate_limit="30/minute",
                           budget=Budget(daily=2.0))
    """)
    )
    code, out, _ = smallops(
        capsys, "-p", str(tmp_path), "run", "guarded", "--json", '{"text": "hi"}'
    )
    assert code == 0
    code, out, _ = smallops(capsys, "-p", str(tmp_path), "status", "--json")
    row = json.loads(out)
    assert code == 0 and row["workflow"] == "guarded"
    assert row["breaker"]["state"] == "closed" and row["breaker"]["shared"] is False
    assert row["breaker"]["source"] == "process" and row["rate_limits_source"] == "process"
    assert row["rate_limits"][0] == {"limit": "30 requests/minute", "remaining": 29}
    assert row["budget"][0]["cap_usd"] == 2.0 and row["budget"][0]["period"].startswith("day:")
    assert row["queued_for_review"] == 1 and row["degraded"] == []
    code, out, _ = smallops(capsys, "-p", str(tmp_path), "status")
    assert code == 0 and "breaker   closed" in out and "1 waiting for review" in out


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "rediss:/x", "redis://h:port/0"])
def test_a_redis_url_that_is_not_one_is_a_config_error_wherever_it_is_given(tmp_path, url):
    """Settings, the shared breakers and the shared rate limits each refuse it in one line."""
    from smallops.errors import ConfigError
    from smallops.resilience.breaker import breaker_store
    from smallops.resilience.ratelimit import RateLimit, parse_limits

    with pytest.raises(ConfigError, match="redis_url"):
        Settings(root=tmp_path, redis_url=url)
    with pytest.raises(ConfigError, match="Redis URL of the circuit breakers"):
        breaker_store(url)
    with pytest.raises(ConfigError, match="Redis URL of the rate limits"):
        RateLimit("triage", parse_limits("1/second", "rate_limit", "triage"), [], url, 0.0)
