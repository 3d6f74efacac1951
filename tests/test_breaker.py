"""The circuit breaker, run once against each store: memory, and the real Redis at 127.0.0.1:6379.

Every test steps through time by passing `now`, on fresh keys; Redis keys are deleted after.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pytest
import redis

from smallops.errors import MissingExtraError
from smallops.resilience.breaker import (
    IDLE_TTL,
    BreakerConfig,
    BreakerStore,
    FallbackBreakerStore,
    MemoryBreakerStore,
    RedisBreakerStore,
    Transition,
    breaker_store,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
CFG = BreakerConfig(failure_rate=0.5, min_calls=4, window=10.0, open_for=5.0, probes=2)
T0 = 1_700_000_000.25
STATE_FIELDS = {"state", "opened_at", "calls", "failures", "probes_out", "probes_ok"}


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.skip(f"no Redis server reachable at 127.0.0.1:6379 ({error})")
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    """Every key a test uses starts with this, so its Redis keys can be found and deleted."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def key(prefix: str) -> str:
    return f"{prefix}|openai"


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, prefix: str) -> Iterator[BreakerStore]:
    if request.param == "memory":
        yield MemoryBreakerStore()
        return
    client = request.getfixturevalue("redis_client")
    yield RedisBreakerStore(client)
    delete_keys(client, prefix)


def delete_keys(client: redis.Redis, prefix: str) -> None:
    pattern = f"smallops:breaker:{{{prefix}*"
    left = list(client.scan_iter(match=pattern))
    if left:
        client.delete(*left)
    assert not list(client.scan_iter(match=pattern))


def record(
    store: BreakerStore, key: str, oks: list[bool], at: float, config: BreakerConfig = CFG
) -> list[Transition | None]:
    return [store.record(key, config, ok=ok, probe=False, now=at) for ok in oks]


def open_breaker(store: BreakerStore, key: str, at: float) -> None:
    changes = [t for t in record(store, key, [False] * CFG.min_calls, at) if t]
    assert [(t.before, t.after) for t in changes] == [("closed", "open")]


def half_open(store: BreakerStore, key: str, at: float) -> float:
    """Open the breaker at `at`; return when it went half-open (its first probe is out)."""
    open_breaker(store, key, at)
    decision, change = store.allow(key, CFG, now=at + CFG.open_for)
    assert decision == "probe"
    assert change is not None
    assert (change.before, change.after) == ("open", "half_open")
    return at + CFG.open_for


def test_stays_closed_below_min_calls(store: BreakerStore, key: str) -> None:
    assert record(store, key, [False] * (CFG.min_calls - 1), T0) == [None] * (CFG.min_calls - 1)
    assert store.allow(key, CFG, now=T0 + 1) == ("closed", None)
    state = store.state(key, CFG, now=T0 + 1)
    assert set(state) == STATE_FIELDS
    assert state == {
        "state": "closed",
        "opened_at": None,
        "calls": 3,
        "failures": 3,
        "probes_out": 0,
        "probes_ok": 0,
    }


def test_opens_at_the_failure_rate_once_min_calls_is_reached(store: BreakerStore, key: str) -> None:
    oks = [True, True, False, True, False]  # 2 of 5 failed: below the rate
    changes = [store.record(key, CFG, ok, False, now=T0 + i / 10) for i, ok in enumerate(oks)]
    assert changes == [None] * 5
    change = store.record(key, CFG, False, False, now=T0 + 1)  # 3 of 6: the rate is reached
    assert change == Transition(key, "closed", "open", "3 of 6 calls failed in 10 s", T0 + 1)
    assert store.allow(key, CFG, now=T0 + 1) == ("open", None)
    state = store.state(key, CFG, now=T0 + 2)
    assert (state["state"], state["opened_at"], state["calls"]) == ("open", T0 + 1, 0)


def test_the_outcome_that_reaches_min_calls_can_open_it(store: BreakerStore, key: str) -> None:
    assert record(store, key, [False, False, False], T0) == [None] * 3
    change = store.record(key, CFG, True, False, now=T0)  # a success, but 3 of 4 failed
    assert change is not None
    assert change.reason == "3 of 4 calls failed in 10 s"


def test_old_outcomes_slide_out_of_the_window(store: BreakerStore, key: str, prefix: str) -> None:
    record(store, key, [False] * 3, T0)
    assert store.state(key, CFG, now=T0 + CFG.window - 0.001)["calls"] == 3
    assert store.state(key, CFG, now=T0 + CFG.window)["calls"] == 0
    assert store.record(key, CFG, False, False, now=T0 + CFG.window) is None  # 1 of 1 now
    state = store.state(key, CFG, now=T0 + CFG.window)
    assert (state["state"], state["calls"], state["failures"]) == ("closed", 1, 1)
    changes = record(store, key, [False] * 3, T0 + CFG.window)
    assert changes[-1] is not None
    assert changes[-1].reason == "4 of 4 calls failed in 10 s"  # not 7: the first three are gone

    other = f"{prefix}|anthropic"  # the same, a moment earlier: all four are in the window
    record(store, other, [False] * 3, T0)
    change = store.record(other, CFG, False, False, now=T0 + CFG.window - 0.001)
    assert change is not None
    assert change.reason == "4 of 4 calls failed in 10 s"


def test_open_refuses_every_call_until_open_for_has_passed(store: BreakerStore, key: str) -> None:
    open_breaker(store, key, T0)
    for dt in (0, 1, 2.5, CFG.open_for - 0.001):
        assert store.allow(key, CFG, now=T0 + dt) == ("open", None)
    assert store.state(key, CFG, now=T0 + CFG.open_for - 0.001)["state"] == "open"
    assert store.state(key, CFG, now=T0 + CFG.open_for)["state"] == "half_open"
    decision, change = store.allow(key, CFG, now=T0 + CFG.open_for)
    assert decision == "probe"
    assert change == Transition(
        key, "open", "half_open", "open for 5 s: probing", T0 + CFG.open_for
    )


def test_half_open_lets_exactly_probes_through(store: BreakerStore, key: str) -> None:
    t1 = half_open(store, key, T0)
    decisions = [store.allow(key, CFG, now=t1 + i / 100) for i in range(1, 6)]
    assert decisions == [("probe", None)] + [("open", None)] * 4  # 2 probes in all
    state = store.state(key, CFG, now=t1 + 1)
    assert (state["state"], state["probes_out"], state["probes_ok"]) == ("half_open", 2, 0)


def test_all_probes_succeeding_close_it_with_an_empty_window(store: BreakerStore, key: str) -> None:
    t1 = half_open(store, key, T0)
    store.allow(key, CFG, now=t1)
    assert store.record(key, CFG, True, True, now=t1 + 1) is None
    assert store.state(key, CFG, now=t1 + 1)["probes_ok"] == 1
    change = store.record(key, CFG, True, True, now=t1 + 2)
    assert change == Transition(key, "half_open", "closed", "2 probes succeeded", t1 + 2)
    assert store.state(key, CFG, now=t1 + 2) == {
        "state": "closed",
        "opened_at": None,
        "calls": 0,
        "failures": 0,
        "probes_out": 0,
        "probes_ok": 0,
    }
    assert store.allow(key, CFG, now=t1 + 2) == ("closed", None)
    # the failures that opened it are still inside the window's span, but no longer count
    assert record(store, key, [False] * (CFG.min_calls - 1), t1 + 3) == [None] * 3


def test_a_probe_failure_reopens_it_for_a_fresh_open_for(store: BreakerStore, key: str) -> None:
    t1 = half_open(store, key, T0)
    assert store.allow(key, CFG, now=t1) == ("probe", None)
    change = store.record(key, CFG, False, True, now=t1 + 1)
    assert change == Transition(key, "half_open", "open", "a probe failed", t1 + 1)
    assert store.record(key, CFG, True, True, now=t1 + 1.5) is None  # the other probe, too late
    state = store.state(key, CFG, now=t1 + 2)
    assert (state["state"], state["opened_at"], state["probes_out"]) == ("open", t1 + 1, 0)
    assert store.allow(key, CFG, now=t1 + 1 + CFG.open_for - 0.001) == ("open", None)
    decision, change = store.allow(key, CFG, now=t1 + 1 + CFG.open_for)
    assert decision == "probe"
    assert change is not None
    assert (change.before, change.after) == ("open", "half_open")


def test_late_outcomes_of_ordinary_calls_are_ignored(
    store: BreakerStore, key: str, prefix: str
) -> None:
    open_breaker(store, key, T0)
    assert record(store, key, [True, False] * 5, T0 + 1) == [None] * 10
    state = store.state(key, CFG, now=T0 + 1)
    assert (state["state"], state["opened_at"], state["calls"]) == ("open", T0, 0)
    t1 = half_open_again(store, key, T0 + CFG.open_for)
    assert record(store, key, [True] * 5, t1) == [None] * 5  # not probes: they cannot close it
    state = store.state(key, CFG, now=t1)
    assert (state["state"], state["probes_ok"]) == ("half_open", 0)

    stray = f"{prefix}|stray"  # a probe outcome when no probing is going on
    assert store.record(stray, CFG, False, True, now=T0) is None
    assert store.state(stray, CFG, now=T0)["state"] == "closed"


def half_open_again(store: BreakerStore, key: str, at: float) -> float:
    decision, change = store.allow(key, CFG, now=at)
    assert decision == "probe"
    assert change is not None
    return at


def test_lost_probes_are_replaced_after_open_for(store: BreakerStore, key: str) -> None:
    t1 = half_open(store, key, T0)
    assert store.allow(key, CFG, now=t1) == ("probe", None)  # neither probe ever reports back
    assert store.allow(key, CFG, now=t1 + CFG.open_for - 0.001) == ("open", None)
    decision, change = store.allow(key, CFG, now=t1 + CFG.open_for)
    assert decision == "probe"
    assert change == Transition(
        key, "half_open", "half_open", "probes unanswered for 5 s: probing again", t1 + 5
    )
    assert store.allow(key, CFG, now=t1 + CFG.open_for) == ("probe", None)
    assert store.allow(key, CFG, now=t1 + CFG.open_for) == ("open", None)


def test_each_transition_is_returned_once(store: BreakerStore, key: str) -> None:
    changes: list[Transition] = []

    def step(at: float, *outcomes: tuple[bool, bool], allows: int = 3) -> list[str]:
        decisions = []
        for _ in range(allows):
            decision, change = store.allow(key, CFG, now=at)
            decisions.append(decision)
            changes.extend([change] if change else [])
        for ok, probe in outcomes:
            change = store.record(key, CFG, ok, probe, now=at)
            changes.extend([change] if change else [])
        return decisions

    assert step(T0, *[(False, False)] * 6) == ["closed"] * 3
    assert step(T0 + 1, (False, False)) == ["open"] * 3
    assert step(T0 + 5, (False, True)) == ["probe", "probe", "open"]
    assert step(T0 + 7) == ["open"] * 3
    assert step(T0 + 10, (True, True), (True, True), (True, True)) == ["probe", "probe", "open"]
    assert step(T0 + 11, (False, False)) == ["closed"] * 3
    assert [(c.before, c.after, c.reason, c.at) for c in changes] == [
        ("closed", "open", "4 of 4 calls failed in 10 s", T0),
        ("open", "half_open", "open for 5 s: probing", T0 + 5),
        ("half_open", "open", "a probe failed", T0 + 5),
        ("open", "half_open", "open for 5 s: probing", T0 + 10),
        ("half_open", "closed", "2 probes succeeded", T0 + 10),
    ]


def test_config_rejects_nonsense() -> None:
    for bad in ({"probes": 0}, {"min_calls": 0}, {"failure_rate": 0}, {"failure_rate": 1.5}):
        with pytest.raises(ValueError):
            BreakerConfig(**bad)  # type: ignore[arg-type]


@pytest.fixture
def busy_threads() -> Iterator[None]:
    """Switch threads far more often than usual, so races have every chance to show."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def hammer(threads: int, work: Any) -> list[Any]:
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


@pytest.mark.usefixtures("busy_threads")
def test_threads_never_get_more_than_probes(store: BreakerStore, key: str) -> None:
    config = BreakerConfig(min_calls=4, window=10.0, open_for=5.0, probes=3)
    record(store, key, [False] * 4, T0, config)
    rounds = 2000 if isinstance(store, MemoryBreakerStore) else 100

    def work() -> int:
        probes = 0
        for i in range(rounds):
            decision, _ = store.allow(key, config, now=T0 + 5 + i / 1e6)
            probes += decision == "probe"
            store.record(key, config, ok=False, probe=False, now=T0 + 5)  # ignored: not a probe
        return probes

    assert sum(hammer(8, work)) == config.probes
    assert store.state(key, config, now=T0 + 6)["probes_out"] == config.probes


@pytest.mark.usefixtures("busy_threads")
def test_threads_lose_no_outcomes_and_open_it_once(store: BreakerStore, key: str) -> None:
    per_thread = 500 if isinstance(store, MemoryBreakerStore) else 100
    config = BreakerConfig(failure_rate=1.0, min_calls=8 * per_thread, window=60.0)

    def work() -> list[Transition]:
        changes = (store.record(key, config, False, False, now=T0) for _ in range(per_thread))
        return [c for c in changes if c]

    changes = [c for result in hammer(8, work) for c in result]
    calls = 8 * per_thread
    assert [c.reason for c in changes] == [f"{calls} of {calls} calls failed in 60 s"]


WORKER = """
import json, sys, time
from smallops.resilience.breaker import BreakerConfig, RedisBreakerStore

store = RedisBreakerStore(sys.argv[1])
config, key = BreakerConfig(**json.loads(sys.argv[2])), sys.argv[3]
print("ready", flush=True)
for line in sys.stdin:
    op, now, times, start = json.loads(line)
    time.sleep(max(0.0, start - time.time()))  # the processes start together
    if op == "allow":
        replies = [store.allow(key, config, now=now) for _ in range(times)]
        out = [[decision, change and change.after] for decision, change in replies]
    else:
        ok = probe = op == "probe_ok"
        changes = [store.record(key, config, ok, probe, now=now) for _ in range(times)]
        out = [c.after for c in changes if c]
    print(json.dumps(out), flush=True)
"""


class Worker:
    """A separate Python process driving the same Redis breaker, one command per line."""

    def __init__(self, config: BreakerConfig, key: str) -> None:
        args = [sys.executable, "-c", WORKER, REDIS_URL, json.dumps(asdict(config)), key]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self.readline() == "ready"

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def send(self, op: str, now: float, times: int = 1, start: float = 0.0) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([op, now, times, start]) + "\n")

    def reply(self) -> Any:
        return json.loads(self.readline())

    def ask(self, op: str, now: float, times: int = 1) -> Any:
        self.send(op, now, times)
        return self.reply()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_redis_breaker_is_shared_by_processes(redis_client: redis.Redis, prefix: str) -> None:
    config = BreakerConfig(failure_rate=0.5, min_calls=5, window=10.0, open_for=5.0, probes=3)
    key = f"{prefix}|openai"
    workers: list[Worker] = []
    try:
        for _ in range(4):
            workers.append(Worker(config, key))
        first, others = workers[0], workers[1:]
        assert first.ask("fail", T0, config.min_calls) == ["open"]
        assert [w.ask("allow", T0 + 1) for w in others] == [[["open", None]]] * 3

        start = time.time() + 0.2
        for w in workers:  # all four at once, 50 callers each
            w.send("allow", T0 + config.open_for, 50, start)
        replies = [w.reply() for w in workers]
        granted = [sum(d == "probe" for d, _ in reply) for reply in replies]
        changes = [after for reply in replies for _, after in reply if after]
        assert sum(granted) == config.probes
        assert changes == ["half_open"]

        closing = [w.ask("probe_ok", T0 + 6, n) for w, n in zip(workers, granted, strict=True) if n]
        assert [c for reply in closing for c in reply] == ["closed"]
        assert [w.ask("allow", T0 + 7) for w in workers] == [[["closed", None]]] * 4
    finally:
        for w in workers:
            w.stop()
        delete_keys(redis_client, prefix)


def test_redis_uses_one_round_trip_and_expiring_keys(redis_client: redis.Redis, key: str) -> None:
    commands: list[str] = []

    class Counting(redis.Redis):
        def execute_command(self, *args: Any, **options: Any) -> Any:
            commands.append(str(args[0]))
            return super().execute_command(*args, **options)

    client = Counting(host="127.0.0.1", port=6379, decode_responses=True)
    store = RedisBreakerStore(client)
    names = store.keys(key)
    try:
        store.allow(key, CFG, now=T0)  # the first call may load the scripts
        store.record(key, CFG, True, False, now=T0)
        commands.clear()
        assert store.allow(key, CFG, now=T0) == ("closed", None)
        assert store.record(key, CFG, False, False, now=T0) is None
        assert commands == ["EVALSHA", "EVALSHA"]
        for name in names:
            assert 0 < client.ttl(name) <= max(IDLE_TTL, CFG.window + 60)
        assert client.ttl(names[1]) <= CFG.window + 60  # outcomes go soon after the window
        open_breaker(store, key, T0)
        assert 0 < client.ttl(names[0]) <= IDLE_TTL
    finally:
        client.delete(*names)
        client.close()


def test_breaker_store_is_one_per_url(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert breaker_store(None) is breaker_store(None)
    assert isinstance(breaker_store(None), MemoryBreakerStore)
    assert not breaker_store(None).needs_io
    shared = breaker_store(REDIS_URL)
    assert shared is breaker_store(REDIS_URL)
    assert isinstance(shared, FallbackBreakerStore)  # Redis, and memory while it is down
    assert isinstance(shared.shared, RedisBreakerStore)
    assert shared.needs_io and shared.degraded() is None

    monkeypatch.setitem(sys.modules, "redis", None)  # as if the extra were not installed
    with pytest.raises(MissingExtraError) as raised:
        breaker_store(f"redis://127.0.0.1:6379/0?client_name={uuid.uuid4().hex}")
    assert "'redis' package" in str(raised.value)
    assert raised.value.hint == "pip install 'smallops[redis]'"


def test_a_busy_window_stays_exact_and_its_memory_is_the_window_not_the_history() -> None:
    """Thousands of calls a second: the memory store counts exactly what a list of every
    outcome would, and holds about a window's worth of them, never the whole history."""
    import random

    config = BreakerConfig(failure_rate=0.99, min_calls=10**9, window=2.0)
    store, rng = MemoryBreakerStore(), random.Random(7)
    history: list[tuple[float, bool]] = []
    now = T0
    for _ in range(60_000):  # 30 s at 2,000 calls a second, a few arriving out of order
        now += 0.0005
        at = now - (0.003 if rng.random() < 0.05 else 0.0)
        ok = rng.random() > 0.2
        history.append((at, ok))
        store.record("busy", config, ok, False, now=at)
        if len(history) % 7919 == 0:
            for probe in (now, now + 0.5, now + 1.999):
                cutoff = probe - config.window
                inside = [good for t, good in history if t > cutoff]
                state = store.state("busy", config, now=probe)
                assert (state["calls"], state["failures"]) == (len(inside), inside.count(False))
    outcomes = store._breakers["busy"].outcomes
    assert len(outcomes) <= 2.0 / 0.0005 + 10
    assert len(outcomes._times) <= 2 * len(outcomes) + outcomes._COMPACT + 1
