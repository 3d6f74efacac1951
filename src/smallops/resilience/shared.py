"""The stores guards share between processes (Redis, the log database), and what a guard does
while its store does not answer.

A rate limit and a breaker carry on in this process's memory; a budget refuses, since it cannot
know what was spent. The outage is logged once when it starts and once when the store answers
again; meanwhile every run it touches records it, and `smallops status` shows it. The store is
tried again every RETRY_AFTER seconds by one call at a time, so a store that hangs holds up at
most one call per interval, for at most its timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from smallops.redact import Redactor

log = logging.getLogger("smallops")

REDIS_TIMEOUT = 1.0  # seconds to connect to Redis, and to wait for each of its replies
RETRY_AFTER = 2.0  # seconds before a store that did not answer is tried again

T = TypeVar("T")


def redis_timeouts() -> dict[str, Any]:
    """Options for a Redis client: a stalled Redis costs a call a second, not the whole batch."""
    return {"socket_connect_timeout": REDIS_TIMEOUT, "socket_timeout": REDIS_TIMEOUT}


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis that is down, stalled or refusing writes raises."""
    import redis

    return (redis.RedisError, OSError)


def describe(error: BaseException) -> str:
    """One line naming the failure, without secrets (SQLAlchemy's own text spans lines)."""
    line = f"{type(error).__name__}: {error}".splitlines()[0]
    return Redactor.from_environment()(line) or line


class SharedStore:
    """One shared store as this process finds it: answering, or down since a given moment."""

    def __init__(
        self, guard: str, where: str, instead: str, errors: tuple[type[BaseException], ...]
    ) -> None:
        self.guard = guard  # the guard's name in run decisions: rate_limit, breaker, budget
        self.where = where  # the store, without credentials
        self.instead = instead  # what this process does while it is down
        self.errors = errors
        self.since: float | None = None
        self.reason: str | None = None
        self._down_at = 0.0  # time.monotonic() when the outage was noticed
        self._next_try = 0.0
        self._lock = threading.Lock()

    def call(self, shared: Callable[[], T], local: Callable[[], T]) -> T:
        """`shared()` while the store answers; `local()` while it is down or when it fails now."""
        if self._should_try():
            began = time.monotonic()
            try:
                value = shared()
            except self.errors as error:
                self.failed(error)
            else:
                self._answered(began)
                return value
        return local()

    def failed(self, error: BaseException) -> None:
        """Count the store as down from now (if it was not already), and wait before retrying."""
        with self._lock:
            now = time.monotonic()
            self._next_try = now + RETRY_AFTER
            if self.since is not None:
                return
            self.since, self.reason, self._down_at = time.time(), describe(error), now
        log.warning(
            "smallops: %s: %s unreachable (%s); %s until it answers",
            self.guard,
            self.where,
            self.reason,
            self.instead,
        )

    def degraded(self) -> dict[str, Any] | None:
        """The outage, for a run's guard decisions and `smallops status`; None while it answers."""
        since, reason = self.since, self.reason
        if since is None:
            return None
        at = datetime.fromtimestamp(since, timezone.utc)
        return {
            "guard": self.guard,
            "decision": "degraded",
            "reason": f"{self.where} unreachable since {at:%H:%M:%S} UTC ({reason}); "
            f"{self.instead}",
            "since": at.isoformat(),
        }

    def _should_try(self) -> bool:
        if self.since is None:
            return True
        with self._lock:
            now = time.monotonic()
            if self.since is None or now >= self._next_try:
                self._next_try = now + RETRY_AFTER  # one caller tries; the others carry on
                return True
            return False

    def _answered(self, began: float) -> None:
        """A call that began after the outage was noticed got an answer: the store is back.
        (One already under way when it was noticed says nothing new.)"""
        if self.since is None or began < self._down_at:
            return
        with self._lock:
            if self.since is None or began < self._down_at:
                return
            since, self.since, self.reason = self.since, None, None
        log.warning(
            "smallops: %s: %s answers again after %.0f s; using it again",
            self.guard,
            self.where,
            time.time() - since,
        )
