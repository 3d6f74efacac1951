"""Retries of one provider request: tenacity's backoff, Retry-After, one overall deadline.

The policy only decides; the call lifecycle does the waiting, so the same decisions serve the
sync and the async paths.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import tenacity

from smallops.providers.base import ProviderError


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `attempts` tries per request, each within `timeout`, all within `deadline` seconds."""

    attempts: int = 4
    timeout: float = 30.0
    deadline: float = 90.0
    max_wait: float = 30.0
    _wait: tenacity.wait.wait_base = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.timeout <= 0 or self.deadline <= 0:
            raise ValueError("attempts, timeout and deadline must be positive")
        wait = tenacity.wait_random_exponential(multiplier=0.5, max=self.max_wait)
        object.__setattr__(self, "_wait", wait)

    def delay(self, error: ProviderError, attempt: int, elapsed: float) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up now.

        A server that says when to come back (Retry-After) knows its own load better than our
        backoff does: wait that long plus up to 10% jitter, so clients told the same thing do
        not return together. Otherwise back off exponentially with full jitter. Gives up on
        errors that retrying cannot fix, after the last attempt, and when the wait would pass
        the deadline.
        """
        if not error.retryable or attempt >= self.attempts:
            return None
        if error.retry_after is not None:
            wait = error.retry_after * random.uniform(1.0, 1.1)
        else:
            state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
            state.attempt_number = attempt
            wait = self._wait(state)
        if elapsed + wait >= self.deadline:
            return None
        return wait

    def attempt_timeout(self, elapsed: float) -> float:
        """The timeout for the next attempt: never past the deadline."""
        return max(0.001, min(self.timeout, self.deadline - elapsed))
