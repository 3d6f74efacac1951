"""Every error type a run can record, defined once, in the groups callers decide on.

A run that did not end with a usable output records why in `error_type`:

- a guard refused it before any request was made (REFUSALS);
- it could not be sent: the provider's key could not be had from its secret store
  (`secret_unavailable`: the store is down past max_stale, or has no such secret);
- the provider gave no answer: an HTTP error, a timeout, a dropped connection, a body that is not
  a response (PROVIDER_FAILURES; the RETRYABLE ones are retried under the call's deadline);
- the model answered, but not usably: it refused, was cut off, or broke the schema;
- the call never finished: cancelled, or the inputs or the configuration were wrong.

NO_ANSWER, the first three groups, is what says nothing about a prompt: the model never saw it or
never replied. NO_VERDICT adds the calls that never finished (a bug, a bad input): the eval gate
cannot judge a prompt from such a case, whatever the reason. Only the model's own answer
problems (the fourth group) count against a prompt.
"""

from __future__ import annotations

from typing import Literal, get_args

GuardRefusal = Literal["throttled", "breaker_open", "budget_exhausted", "budget_unavailable"]
Unsendable = Literal["secret_unavailable"]
ProviderFailure = Literal[
    "rate_limited",
    "server_error",
    "timeout",
    "connection_error",
    "auth_error",
    "bad_response",
    "bad_request",
]
AnswerProblem = Literal["refused", "truncated", "invalid_json", "schema_mismatch"]
Unfinished = Literal["cancelled", "input_error", "config_error", "internal_error"]
ErrorType = Literal[GuardRefusal, Unsendable, ProviderFailure, AnswerProblem, Unfinished]

#: Error types of calls a guard sent to the fallback before any request was made.
REFUSALS: tuple[GuardRefusal, ...] = get_args(GuardRefusal)
#: Error types of calls that could not be sent: no key (never retried, never a breaker failure).
UNSENDABLE: tuple[Unsendable, ...] = get_args(Unsendable)
#: Calls sent to the fallback before any request reached the provider: refused, or unsendable.
NOT_SENT: tuple[GuardRefusal | Unsendable, ...] = REFUSALS + UNSENDABLE
#: Kinds of provider failure (ProviderError.kind; the breaker raises one as "breaker_open").
PROVIDER_FAILURES: tuple[ProviderFailure, ...] = get_args(ProviderFailure)
#: Provider failures worth another attempt: the same request may well succeed.
RETRYABLE: frozenset[str] = frozenset(
    {"rate_limited", "server_error", "timeout", "connection_error", "bad_response"}
)
#: The model gave no answer: a guard refused the call, it could not be sent, or the provider
#: failed it.
NO_ANSWER: frozenset[str] = frozenset(NOT_SENT + PROVIDER_FAILURES)
ERROR_TYPES: tuple[ErrorType, ...] = get_args(ErrorType)
#: Calls that never finished: nothing was learnt about the model or the prompt.
UNFINISHED: tuple[Unfinished, ...] = get_args(Unfinished)
#: Cases the eval gate cannot judge: no answer, or a call that never finished.
NO_VERDICT: frozenset[str] = NO_ANSWER | frozenset(UNFINISHED)
