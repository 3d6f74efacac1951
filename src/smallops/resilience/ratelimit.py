"""Rate limits per workflow, in requests and tokens, with the `limits` library.

In memory by default; shared through Redis (SMALLOPS_REDIS_URL) so that several processes and
hosts share one limit (while Redis does not answer, each process keeps its own). Requests use a
moving window (exact: "120/minute" admits 120 calls in any minute); tokens use a sliding window
counter (cheap for large counts). At the limit a call waits up to `wait` seconds for room, then
goes to the workflow's fallback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from smallops.config import check_redis_url
from smallops.errors import ConfigError, MissingExtraError
from smallops.resilience.shared import SharedStore, redis_errors, redis_timeouts
from smallops.storage.db import safe_url

T = TypeVar("T")
_storages: dict[str, Any] = {}
_shared_stores: dict[str, SharedStore] = {}
_lock = threading.Lock()


def _storage(redis_url: str | None) -> Any:
    from limits.storage import storage_from_string

    url = redis_url or "memory://"
    with _lock:
        if url not in _storages and not redis_url:
            _storages[url] = _memory_storage()
        if url not in _storages:
            if redis_url:
                check_redis_url(redis_url, "the Redis URL of the rate limits")
                try:
                    import redis  # noqa: F401
                except ImportError:
                    raise MissingExtraError(
                        "redis", "redis", "a rate limit shared through Redis"
                    ) from None
            _storages[url] = storage_from_string(url, **redis_timeouts())
        return _storages[url]


def _shared_store(redis_url: str) -> SharedStore:
    """One per Redis URL per process, so an outage is noticed (and logged) once."""
    with _lock:
        if redis_url not in _shared_stores:
            _shared_stores[redis_url] = SharedStore(
                "rate_limit",
                f"Redis at {safe_url(redis_url)}",
                "using this process's limit",
                redis_errors(),
            )
        return _shared_stores[redis_url]


def _memory_storage() -> Any:
    """limits' memory storage, expiring old entries as it is used (at most once a second).

    The stock one starts a timer thread every 10 ms to expire them, which puts a thread start
    on the request path every few calls and costs a tenth of a millisecond per call.
    """
    from limits.storage import MemoryStorage

    class LazyMemoryStorage(MemoryStorage):
        next_expiry = 0.0

        def _MemoryStorage__schedule_expiry(self) -> None:  # the private method it replaces
            now = time.monotonic()
            if now >= self.next_expiry:
                self.next_expiry = now + 1.0
                self._MemoryStorage__expire_events()  # type: ignore[attr-defined]

    return LazyMemoryStorage()


def parse_limits(value: str | list[str] | None, what: str, workflow: str) -> list[Any]:
    """ "60/minute", or several ("10/second", "1000/hour"): limits' own notation."""
    from limits import parse_many

    if value is None:
        return []
    texts = [value] if isinstance(value, str) else value
    try:
        return [item for text in texts for item in parse_many(text)]
    except ValueError:
        raise ConfigError(
            f"workflow {workflow!r}: {what} {value!r} is not a rate",
            hint='write it like "60/minute" or ["10/second", "1000/hour"]',
        ) from None


class RateLimit:
    """One workflow's request and token limits.

    Shared through Redis when there is one; while it does not answer, each process keeps the
    limits in its own memory (so N processes may together admit N times the limit).
    """

    def __init__(
        self,
        workflow: str,
        requests: list[Any],
        tokens: list[Any],
        redis_url: str | None,
        wait: float,
    ) -> None:
        self.workflow = workflow
        self.requests = requests
        self.tokens = tokens
        self.wait = wait
        self.needs_io = redis_url is not None
        self._local = _Limiters(_storage(None))
        self._shared = _Limiters(_storage(redis_url)) if redis_url else None
        self.store = _shared_store(redis_url) if redis_url else None

    def acquire(self, tokens: int) -> float:
        """Take room for one call of about `tokens` tokens: 0 when taken, else seconds to wait."""
        return self._either(lambda limiters: self._acquire(limiters, tokens))

    def headroom(self) -> list[dict[str, Any]]:
        """What is left of each limit now (for `smallops status`)."""
        return self._either(self._headroom)

    def degraded(self) -> dict[str, Any] | None:
        """The shared store's outage, while it lasts."""
        return self.store.degraded() if self.store is not None else None

    def _either(self, work: Callable[[_Limiters], T]) -> T:
        shared, local = self._shared, self._local
        if shared is None or self.store is None:
            return work(local)
        return self.store.call(lambda: work(shared), lambda: work(local))

    def _acquire(self, limiters: _Limiters, tokens: int) -> float:
        key = ("smallops", self.workflow)
        requests = limiters.requests
        if len(self.requests) == 1 and not self.tokens:  # one limit: one atomic hit is enough
            item = self.requests[0]
            return 0.0 if requests.hit(item, *key) else self._wait(requests, item, key)
        for item in self.requests:
            if not requests.test(item, *key):
                return self._wait(requests, item, key)
        for item in self.tokens:
            if not limiters.tokens.test(item, *key, cost=max(1, tokens)):
                return self._wait(limiters.tokens, item, key)
        for item in self.requests:
            if not requests.hit(item, *key):
                return self._wait(requests, item, key)
        for item in self.tokens:
            limiters.tokens.hit(item, *key, cost=max(1, tokens))
        return 0.0

    def _headroom(self, limiters: _Limiters) -> list[dict[str, Any]]:
        key = ("smallops", self.workflow)
        rows = []
        for kind, limiter, items in (
            ("requests", limiters.requests, self.requests),
            ("tokens", limiters.tokens, self.tokens),
        ):
            for item in items:
                stats = limiter.get_window_stats(item, *key)
                rows.append(
                    {
                        "limit": f"{item.amount} {kind}/{item.GRANULARITY.name}",
                        "remaining": stats.remaining,
                    }
                )
        return rows

    @staticmethod
    def _wait(limiter: Any, item: Any, key: tuple[str, str]) -> float:
        reset = limiter.get_window_stats(item, *key).reset_time
        return max(0.01, min(float(reset) - time.time(), float(item.get_expiry())))


class _Limiters:
    """limits' strategies over one storage: a moving window for requests, a sliding window
    counter for tokens (cheap for large counts)."""

    def __init__(self, storage: Any) -> None:
        from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

        self.requests = MovingWindowRateLimiter(storage)
        self.tokens = SlidingWindowCounterRateLimiter(storage)


def reset_memory() -> None:
    """Forget the in-memory limits (tests, and apps that reconfigure)."""
    with _lock:
        memory = _storages.pop("memory://", None)
        if memory is not None:
            memory.reset()
