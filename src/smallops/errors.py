"""The exceptions smallops raises, in one tree.

    SmallopsError                   anything smallops raises on purpose
    ├── ConfigError                 the project or a workflow is set up wrong (CLI exit 2)
    │   ├── UnpinnedModelError      a moving model alias where a pinned version is required
    │   ├── MissingFallbackError    a workflow that declares no fallback
    │   ├── TemplateError           a prompt that cannot be loaded or rendered
    │   ├── InputError              inputs that do not fit the workflow (bad JSONL, bad JSON)
    │   │   └── Unapprovable        a review output that cannot be approved as it is
    │   ├── UnknownWorkflowError    a workflow name that no module defines
    │   └── MissingExtraError       an optional dependency that is not installed
    ├── StorageError                the log database cannot be used (CLI exit 1)
    ├── NotFoundError               a run id, or other record, that does not exist (CLI exit 1)
    ├── HeldError                   another reviewer holds the review item (a lease)
    ├── DecidedError                the review item was decided already
    ├── WorkflowFailed              a call failed and the workflow's fallback is "raise"
    ├── KeyUnavailableError         a provider's secret store cannot be asked (CLI exit 1)
    └── ProviderError               a model API gave no usable answer (providers raise it; the
                                    call's lifecycle turns it into a retry or the fallback)

Every error carries a `hint`: one sentence telling the user how to fix it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from smallops.error_types import RETRYABLE

if TYPE_CHECKING:
    from smallops.error_types import ErrorType, ProviderFailure, Unsendable


class SmallopsError(Exception):
    """Base of every error smallops raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ConfigError(SmallopsError):
    """The project, a workflow or an invocation is set up wrong; nothing was spent."""

    exit_code = 2


class UnpinnedModelError(ConfigError):
    """A model id that can change under the workflow without notice."""


class MissingFallbackError(ConfigError):
    """Every workflow must say where its work goes when the model fails."""


class TemplateError(ConfigError):
    """A prompt template that cannot be read, parsed or rendered."""


class InputError(ConfigError):
    """Inputs that do not fit: a missing variable, a bad JSON line."""


class Unapprovable(InputError):
    """The output cannot be approved as it is (see `ReviewDesk.approvable`); nothing changed."""


class UnknownWorkflowError(ConfigError):
    """A workflow name that no module in the project defines."""


class MissingExtraError(ConfigError):
    """An optional dependency is needed but not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed",
            hint=f"pip install 'smallops[{extra}]'",
        )


class StorageError(SmallopsError):
    """The log database cannot be reached or used."""


class NotFoundError(SmallopsError):
    """A run id, or another record, that is not in the log."""


class WorkflowFailed(SmallopsError):
    """A call failed and the workflow's fallback is "raise"; the run is still recorded."""

    def __init__(self, message: str, *, run_id: str, error_type: ErrorType) -> None:
        super().__init__(message, hint=f"see `smallops show {run_id}`")
        self.run_id = run_id
        self.error_type = error_type


class HeldError(SmallopsError):
    """Another reviewer holds the item under a lease."""


class DecidedError(SmallopsError):
    """The item was already decided."""


class KeyUnavailableError(SmallopsError):
    """A provider's key cannot be had now: its secret store does not answer. (A store that
    answers no, or a reference that is wrong, is a ConfigError.)"""


class ProviderError(SmallopsError):
    """A request that produced no usable response; `kind` is one of PROVIDER_FAILURES,
    "breaker_open" when the circuit breaker refused to send it, or "secret_unavailable" when
    its key could not be had from the provider's secret store."""

    def __init__(
        self,
        kind: ProviderFailure | Literal["breaker_open"] | Unsendable,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        raw: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code
        self.retry_after = retry_after
        self.raw = raw

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


def describe_problems(errors: list[Any]) -> str:
    """Pydantic validation errors as one line: `field: message; other: message`."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'output'}: {e['msg']}" for e in errors)
