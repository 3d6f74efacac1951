"""Circuit breakers: stop calling an endpoint that keeps failing, then probe it back to health.

The memory store is the reference; the Redis store makes the same decisions in Lua scripts, so
every process and host behind one Redis shares each breaker. While Redis does not answer, each
process keeps its breakers in its own memory.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from array import array
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from smallops.config import check_redis_url
from smallops.errors import MissingExtraError
from smallops.resilience.shared import SharedStore, redis_errors, redis_timeouts
from smallops.storage.db import safe_url

if TYPE_CHECKING:
    import redis

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
IDLE_TTL = 86_400  # seconds a Redis breaker may sit untouched before it is forgotten


@dataclass(frozen=True)
class BreakerConfig:
    """When to open, for how long, and how many probes must succeed before closing."""

    failure_rate: float = 0.5
    min_calls: int = 10
    window: float = 30.0
    open_for: float = 30.0
    probes: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.min_calls < 1 or self.probes < 1 or self.window <= 0 or self.open_for < 0:
            raise ValueError("min_calls, probes and window must be positive, open_for not negative")


@dataclass(frozen=True)
class Transition:
    """A change of state, returned to the caller that caused it so it can be recorded."""

    key: str
    before: str
    after: str
    reason: str
    at: float


def _transition(
    key: str, before: str, after: str, config: BreakerConfig, now: float, *counts: int
) -> Transition:
    """The change, with a reason that makes sense to someone reading the audit trail."""
    if before == CLOSED:
        reason = "{} of {} calls failed in {:g} s".format(*counts, config.window)
    elif after == OPEN:
        reason = "a probe failed"
    elif after == CLOSED:
        reason = f"{config.probes} probe{'s' if config.probes > 1 else ''} succeeded"
    elif before == OPEN:
        reason = f"open for {config.open_for:g} s: probing"
    else:
        reason = f"probes unanswered for {config.open_for:g} s: probing again"
    return Transition(key, before, after, reason, now)


Decision = tuple[str, Transition | None]  # ("closed" | "probe" | "open", what changed)


class BreakerStore(ABC):
    """Where breaker state lives; every decision is atomic within the store."""

    needs_io: bool = False  # True when allow and record block on the network

    @abstractmethod
    def allow(self, key: str, config: BreakerConfig, now: float | None = None) -> Decision:
        """Whether to let a call through: "closed", "probe" (as a probe) or "open" (refuse it)."""

    @abstractmethod
    def record(
        self, key: str, config: BreakerConfig, ok: bool, probe: bool, now: float | None = None
    ) -> Transition | None:
        """Count one outcome; `probe` says whether allow() returned "probe" for the call."""

    @abstractmethod
    def state(self, key: str, config: BreakerConfig, now: float | None = None) -> dict[str, Any]:
        """{"state", "opened_at", "calls", "failures", "probes_out", "probes_ok"}, for status."""

    def degraded(self) -> dict[str, Any] | None:
        """The shared store's outage, while it lasts (a store in memory has none)."""
        return None


@dataclass(slots=True)
class _Breaker:
    state: str = CLOSED
    opened_at: float = 0.0
    probes_out: int = 0
    probes_ok: int = 0
    probes_at: float = 0.0  # when the current round of probes began
    outcomes: _Outcomes = field(default_factory=lambda: _Outcomes())


class _Outcomes:
    """The outcomes in a breaker's window, oldest first, as 9 bytes each (a time and a flag in
    two arrays) rather than a tuple of Python objects: at a few thousand calls a second a 30 s
    window holds about a hundred thousand, which as tuples would be 8 MB of a process's
    memory growing with its rate."""

    __slots__ = ("_head", "_oks", "_times", "failures")
    _COMPACT = 4096  # dropped entries kept before the arrays are shifted down

    def __init__(self) -> None:
        self._times = array("d")
        self._oks = array("b")
        self._head = 0  # entries before it have left the window
        self.failures = 0

    def __len__(self) -> int:
        return len(self._times) - self._head

    def add(self, now: float, ok: bool, cutoff: float) -> None:
        """Insert in time order (callers' clocks interleave), then drop what left the window."""
        times, oks = self._times, self._oks
        i = len(times)
        while i > self._head and times[i - 1] > now:
            i -= 1
        times.insert(i, now)
        oks.insert(i, ok)
        self.failures += not ok
        head = self._head
        while head < len(times) and times[head] <= cutoff:
            self.failures -= not oks[head]
            head += 1
        if head > self._COMPACT and head * 2 > len(times):
            del times[:head], oks[:head]
            head = 0
        self._head = head

    def clear(self) -> None:
        self._times, self._oks, self._head, self.failures = array("d"), array("b"), 0, 0

    def since(self, cutoff: float) -> tuple[int, int]:
        """(calls, failures) after `cutoff`."""
        calls = failures = 0
        for index in range(self._head, len(self._times)):
            if self._times[index] > cutoff:
                calls += 1
                failures += not self._oks[index]
        return calls, failures


class MemoryBreakerStore(BreakerStore):
    """Breakers of this process only, behind one lock: the reference for the Lua scripts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, _Breaker] = {}

    def allow(self, key: str, config: BreakerConfig, now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        with self._lock:
            b = self._breakers.get(key)
            if b is None or b.state == CLOSED:
                return CLOSED, None
            if b.state == OPEN:
                if now < b.opened_at + config.open_for:
                    return OPEN, None
                b.state, b.probes_out, b.probes_ok, b.probes_at = HALF_OPEN, 1, 0, now
                return "probe", _transition(key, OPEN, HALF_OPEN, config, now)
            if b.probes_out < config.probes:
                b.probes_out += 1
                return "probe", None
            if now < b.probes_at + config.open_for:
                return OPEN, None
            b.probes_out, b.probes_ok, b.probes_at = 1, 0, now  # the probes were lost: start over
            return "probe", _transition(key, HALF_OPEN, HALF_OPEN, config, now)

    def record(
        self, key: str, config: BreakerConfig, ok: bool, probe: bool, now: float | None = None
    ) -> Transition | None:
        now = time.time() if now is None else now
        with self._lock:
            b = self._breakers.get(key)
            if b is None:
                b = self._breakers[key] = _Breaker()
            if probe:
                return self._probe_outcome(b, key, config, ok, now)
            if b.state != CLOSED:
                return None  # the call started before the breaker opened
            b.outcomes.add(now, ok, now - config.window)
            calls, failures = len(b.outcomes), b.outcomes.failures
            if calls < config.min_calls or failures / calls < config.failure_rate:
                return None
            opened = _transition(key, CLOSED, OPEN, config, now, failures, calls)
            b.state, b.opened_at = OPEN, now
            b.outcomes.clear()
            return opened

    @staticmethod
    def _probe_outcome(
        b: _Breaker, key: str, config: BreakerConfig, ok: bool, now: float
    ) -> Transition | None:
        if b.state != HALF_OPEN:
            return None
        if not ok:
            b.state, b.opened_at, b.probes_out, b.probes_ok = OPEN, now, 0, 0
            return _transition(key, HALF_OPEN, OPEN, config, now)
        b.probes_ok += 1
        if b.probes_ok < config.probes:
            return None
        b.state, b.probes_out, b.probes_ok = CLOSED, 0, 0
        return _transition(key, HALF_OPEN, CLOSED, config, now)

    def state(self, key: str, config: BreakerConfig, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        with self._lock:
            b = self._breakers.get(key) or _Breaker()
            return _snapshot(b, *b.outcomes.since(now - config.window), config, now)


def _snapshot(
    b: _Breaker, calls: int, failures: int, config: BreakerConfig, now: float
) -> dict[str, Any]:
    """What status shows; an open breaker whose time is up already counts as half-open."""
    state = b.state
    if state == OPEN and now >= b.opened_at + config.open_for:
        state = HALF_OPEN
    closed = state == CLOSED
    return {
        "state": state,
        "opened_at": None if closed else b.opened_at,
        "calls": calls if closed else 0,
        "failures": failures if closed else 0,
        "probes_out": b.probes_out,
        "probes_ok": b.probes_ok,
    }


# KEYS: state hash. ARGV: now, open_for, probes, state ttl. Returns {decision[, before, after]}.
ALLOW_LUA = """
local h, now, open_for = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local s = redis.call('HMGET', h, 'state', 'opened_at', 'probes_out', 'probes_at')
if not s[1] or s[1] == 'closed' then return {'closed'} end
if s[1] == 'open' then
  if now < tonumber(s[2]) + open_for then return {'open'} end
  redis.call('HSET', h, 'state', 'half_open', 'probes_out', 1, 'probes_ok', 0, 'probes_at', ARGV[1])
  redis.call('EXPIRE', h, ARGV[4])
  return {'probe', 'open', 'half_open'}
end
if tonumber(s[3]) < tonumber(ARGV[3]) then
  redis.call('HINCRBY', h, 'probes_out', 1)
  return {'probe'}
end
if now < tonumber(s[4]) + open_for then return {'open'} end
redis.call('HSET', h, 'probes_out', 1, 'probes_ok', 0, 'probes_at', ARGV[1])
redis.call('EXPIRE', h, ARGV[4])
return {'probe', 'half_open', 'half_open'}
"""

# KEYS: state hash, calls zset, failures zset. ARGV: now, ok, probe, cutoff, min_calls,
# failure_rate, probes, state ttl, window ttl. Returns {} or {before, after, failures, calls}.
RECORD_LUA = """
local h, calls_key, fails_key, now = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local state = redis.call('HGET', h, 'state') or 'closed'
if ARGV[3] == '1' then
  if state ~= 'half_open' then return {} end
  if ARGV[2] ~= '1' then
    redis.call('HSET', h, 'state', 'open', 'opened_at', now, 'probes_out', 0, 'probes_ok', 0)
    redis.call('EXPIRE', h, ARGV[8])
    return {'half_open', 'open'}
  end
  if redis.call('HINCRBY', h, 'probes_ok', 1) < tonumber(ARGV[7]) then return {} end
  redis.call('HSET', h, 'state', 'closed', 'probes_out', 0, 'probes_ok', 0)
  redis.call('DEL', calls_key, fails_key)
  return {'half_open', 'closed'}
end
if state ~= 'closed' then return {} end
local seq = redis.call('HINCRBY', h, 'seq', 1)
redis.call('EXPIRE', h, ARGV[8])
redis.call('ZADD', calls_key, now, seq)
redis.call('ZREMRANGEBYSCORE', calls_key, '-inf', ARGV[4])
redis.call('EXPIRE', calls_key, ARGV[9])
if ARGV[2] ~= '1' then redis.call('ZADD', fails_key, now, seq) end
redis.call('ZREMRANGEBYSCORE', fails_key, '-inf', ARGV[4])
redis.call('EXPIRE', fails_key, ARGV[9])
local calls, failures = redis.call('ZCARD', calls_key), redis.call('ZCARD', fails_key)
if calls < tonumber(ARGV[5]) or failures / calls < tonumber(ARGV[6]) then return {} end
redis.call('HSET', h, 'state', 'open', 'opened_at', now)
redis.call('DEL', calls_key, fails_key)
return {'closed', 'open', failures, calls}
"""

# KEYS: as RECORD_LUA. ARGV: cutoff. Returns the stored fields and the window's counts.
STATE_LUA = """
local s = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'probes_out', 'probes_ok')
local calls = redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[1], '+inf')
local failures = redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[1], '+inf')
return {s[1] or 'closed', s[2] or '0', s[3] or '0', s[4] or '0', calls, failures}
"""


@lru_cache(maxsize=256)
def _script_args(config: BreakerConfig) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The config's trailing arguments for ALLOW_LUA and RECORD_LUA (repr keeps floats exact)."""
    state_ttl = max(IDLE_TTL, math.ceil(2 * config.open_for + config.window))
    window_ttl = math.ceil(config.window) + 60  # outcomes mean nothing once out of the window
    rate = repr(float(config.failure_rate))
    allow = (repr(float(config.open_for)), config.probes, state_ttl)
    return allow, (config.min_calls, rate, config.probes, state_ttl, window_ttl)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBreakerStore(BreakerStore):
    """Breakers shared by every process and host; each allow and record is one Lua script."""

    needs_io = True

    def __init__(self, client: redis.Redis | str) -> None:
        redis_client = (
            _redis_module().Redis.from_url(client, **redis_timeouts())
            if isinstance(client, str)
            else client
        )
        self.client: redis.Redis = redis_client
        self._allow = self.client.register_script(ALLOW_LUA)
        self._record = self.client.register_script(RECORD_LUA)
        self._state = self.client.register_script(STATE_LUA)

    @staticmethod
    def keys(key: str) -> list[str]:
        """The braces are a hash tag: one breaker's keys share a Redis Cluster slot."""
        return [f"smallops:breaker:{{{key}}}:{part}" for part in ("state", "calls", "failures")]

    def allow(self, key: str, config: BreakerConfig, now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        args = (repr(now), *_script_args(config)[0])
        decision, *change = [_text(v) for v in self._allow(keys=self.keys(key)[:1], args=args)]
        return decision, _transition(key, change[0], change[1], config, now) if change else None

    def record(
        self, key: str, config: BreakerConfig, ok: bool, probe: bool, now: float | None = None
    ) -> Transition | None:
        now = time.time() if now is None else now
        args = (repr(now), int(ok), int(probe), repr(now - config.window), *_script_args(config)[1])
        reply = self._record(keys=self.keys(key), args=args)
        if not reply:
            return None
        return _transition(key, _text(reply[0]), _text(reply[1]), config, now, *reply[2:])

    def state(self, key: str, config: BreakerConfig, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        reply = self._state(keys=self.keys(key), args=[repr(now - config.window)])
        state, opened_at, out, ok, calls, failures = (_text(v) for v in reply)
        b = _Breaker(state, float(opened_at), int(out), int(ok))
        return _snapshot(b, int(calls), int(failures), config, now)


def _redis_module() -> Any:
    purpose = "a circuit breaker shared through Redis"
    try:
        import redis
    except ImportError:
        raise MissingExtraError("redis", "redis", purpose) from None
    return redis


class FallbackBreakerStore(BreakerStore):
    """A shared store, and this process's memory while the shared one does not answer.

    The breakers kept in memory during an outage are not merged back: once the shared store
    answers, its state is the state again.
    """

    def __init__(self, shared: BreakerStore, store: SharedStore) -> None:
        self.shared = shared
        self.local = MemoryBreakerStore()
        self.store = store
        self.needs_io = shared.needs_io

    def allow(self, key: str, config: BreakerConfig, now: float | None = None) -> Decision:
        return self.store.call(
            lambda: self.shared.allow(key, config, now), lambda: self.local.allow(key, config, now)
        )

    def record(
        self, key: str, config: BreakerConfig, ok: bool, probe: bool, now: float | None = None
    ) -> Transition | None:
        return self.store.call(
            lambda: self.shared.record(key, config, ok, probe, now),
            lambda: self.local.record(key, config, ok, probe, now),
        )

    def state(self, key: str, config: BreakerConfig, now: float | None = None) -> dict[str, Any]:
        return self.store.call(
            lambda: self.shared.state(key, config, now), lambda: self.local.state(key, config, now)
        )

    def degraded(self) -> dict[str, Any] | None:
        return self.store.degraded()


_stores: dict[str | None, BreakerStore] = {}
_stores_lock = threading.Lock()


def breaker_store(redis_url: str | None) -> BreakerStore:
    """One store per Redis URL per process (None: this process's memory), so state is shared."""
    with _stores_lock:
        if redis_url not in _stores:
            if redis_url:
                check_redis_url(redis_url, "the Redis URL of the circuit breakers")
            _stores[redis_url] = _redis_store(redis_url) if redis_url else MemoryBreakerStore()
        return _stores[redis_url]


def reset_memory() -> None:
    """Forget this process's in-memory breakers (tests, and apps that reconfigure)."""
    with _stores_lock:
        _stores.pop(None, None)


def _redis_store(redis_url: str) -> BreakerStore:
    shared = RedisBreakerStore(redis_url)
    where = f"Redis at {safe_url(redis_url)}"
    return FallbackBreakerStore(
        shared, SharedStore("breaker", where, "using this process's breaker", redis_errors())
    )
