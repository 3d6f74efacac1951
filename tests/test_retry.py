"""Retries: the server's Retry-After is honoured, backoff grows, the deadline is never passed."""

from __future__ import annotations

import time

from smallops.providers.base import parse_retry_after


def test_retry_after_accepts_seconds_milliseconds_and_dates():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < (parse_retry_after({"retry-after": future}) or 0) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_retries_wait_what_the_server_asks_else_back_off_and_never_pass_the_deadline():
    from smallops.providers.base import ProviderError
    from smallops.resilience.retry import RetryPolicy

    policy = RetryPolicy(attempts=5, deadline=10)
    told = ProviderError("rate_limited", "slow down", status_code=429, retry_after=0.2)
    for attempt in range(1, 5):  # the server's wait, not a growing backoff on top of it
        assert 0.2 <= (policy.delay(told, attempt, elapsed=1.0) or 0) <= 0.22
    assert policy.delay(told, 5, elapsed=1.0) is None  # the last attempt
    assert policy.delay(told, 1, elapsed=9.9) is None  # would pass the deadline
    silent = ProviderError("server_error", "oops", status_code=500)
    waits = [policy.delay(silent, 4, elapsed=0.0) for _ in range(200)]
    assert all(w is not None and 0 <= w <= 4.0 for w in waits)
    assert max(w or 0 for w in waits) > 1.0  # backoff grows with the attempt number
    assert policy.delay(ProviderError("refused", "no"), 1, elapsed=0.0) is None
