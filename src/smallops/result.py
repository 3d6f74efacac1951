"""Result: what a workflow call gives back to the application."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from smallops.error_types import ErrorType
from smallops.kinds import ANSWERED, RunStatus
from smallops.records import Usage

T = TypeVar("T")


@dataclass(frozen=True)
class Result(Generic[T]):
    """The outcome of one call.

    `status` says what the application should do with it:
    - auto: `output` is valid and may be acted on;
    - pending_review: `output` is valid and waits for a human (the review policy);
    - queued_for_human: the model failed (`error` says how), a human will do the work;
    - fallback_default: the model failed, `output` is the workflow's default value;
    - fallback_secondary: the model failed and the secondary model answered (on that model's
      run; this run records the failure);
    - failed: the model failed and the workflow's fallback is "raise".
    """

    run_id: str
    workflow: str
    status: RunStatus
    output: T | None
    error: ErrorType | None
    error_message: str | None
    prompt_version: str
    model: str | None
    usage: Usage
    latency_ms: float
    attempts: int

    @property
    def ok(self) -> bool:
        """True when the model produced a valid output."""
        return self.status in ANSWERED
