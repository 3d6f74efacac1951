"""smallops: AI operations for small teams.

Every model call goes through a Workflow (a pinned model, a versioned prompt, a typed output, a
review policy and a fallback) and is logged in full, in SQLite or Postgres.

The public names load on first use (PEP 562), so that `import smallops` and the command line
start without SQLAlchemy, pydantic or the providers' SDKs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smallops.config import Settings
    from smallops.errors import (
        ConfigError,
        DecidedError,
        HeldError,
        InputError,
        KeyUnavailableError,
        MissingExtraError,
        MissingFallbackError,
        NotFoundError,
        ProviderError,
        SmallopsError,
        StorageError,
        TemplateError,
        Unapprovable,
        UnknownWorkflowError,
        UnpinnedModelError,
        WorkflowFailed,
    )
    from smallops.fallbacks import Fallback, default, secondary
    from smallops.providers import FakeProvider, FakeReply, FakeRequest, Provider, Usage
    from smallops.resilience.breaker import BreakerConfig
    from smallops.resilience.budget import Budget
    from smallops.result import Result
    from smallops.review.policy import ReviewPolicy, sample, until_graduated
    from smallops.review.queue import Decision
    from smallops.storage.writer import flush_all as flush
    from smallops.workflow import Workflow

__version__ = "0.1.0"

__all__ = [
    "BreakerConfig",
    "Budget",
    "ConfigError",
    "DecidedError",
    "Decision",
    "FakeProvider",
    "FakeReply",
    "FakeRequest",
    "Fallback",
    "HeldError",
    "InputError",
    "KeyUnavailableError",
    "MissingExtraError",
    "MissingFallbackError",
    "NotFoundError",
    "Provider",
    "ProviderError",
    "Result",
    "ReviewPolicy",
    "Settings",
    "SmallopsError",
    "StorageError",
    "TemplateError",
    "Unapprovable",
    "UnknownWorkflowError",
    "UnpinnedModelError",
    "Usage",
    "Workflow",
    "WorkflowFailed",
    "__version__",
    "default",
    "flush",
    "sample",
    "secondary",
    "until_graduated",
]

#: Where each public name lives: (module, name there).
_LAZY: dict[str, tuple[str, str]] = {
    "BreakerConfig": ("smallops.resilience.breaker", "BreakerConfig"),
    "Budget": ("smallops.resilience.budget", "Budget"),
    "ConfigError": ("smallops.errors", "ConfigError"),
    "DecidedError": ("smallops.errors", "DecidedError"),
    "Decision": ("smallops.review.queue", "Decision"),
    "FakeProvider": ("smallops.providers", "FakeProvider"),
    "FakeReply": ("smallops.providers", "FakeReply"),
    "FakeRequest": ("smallops.providers", "FakeRequest"),
    "Fallback": ("smallops.fallbacks", "Fallback"),
    "HeldError": ("smallops.errors", "HeldError"),
    "InputError": ("smallops.errors", "InputError"),
    "KeyUnavailableError": ("smallops.errors", "KeyUnavailableError"),
    "MissingExtraError": ("smallops.errors", "MissingExtraError"),
    "MissingFallbackError": ("smallops.errors", "MissingFallbackError"),
    "NotFoundError": ("smallops.errors", "NotFoundError"),
    "Provider": ("smallops.providers", "Provider"),
    "ProviderError": ("smallops.errors", "ProviderError"),
    "Result": ("smallops.result", "Result"),
    "ReviewPolicy": ("smallops.review.policy", "ReviewPolicy"),
    "Settings": ("smallops.config", "Settings"),
    "SmallopsError": ("smallops.errors", "SmallopsError"),
    "StorageError": ("smallops.errors", "StorageError"),
    "TemplateError": ("smallops.errors", "TemplateError"),
    "Unapprovable": ("smallops.errors", "Unapprovable"),
    "UnknownWorkflowError": ("smallops.errors", "UnknownWorkflowError"),
    "UnpinnedModelError": ("smallops.errors", "UnpinnedModelError"),
    "Usage": ("smallops.providers", "Usage"),
    "Workflow": ("smallops.workflow", "Workflow"),
    "WorkflowFailed": ("smallops.errors", "WorkflowFailed"),
    "default": ("smallops.fallbacks", "default"),
    "flush": ("smallops.storage.writer", "flush_all"),
    "sample": ("smallops.review.policy", "sample"),
    "secondary": ("smallops.fallbacks", "secondary"),
    "until_graduated": ("smallops.review.policy", "until_graduated"),
}


def __getattr__(name: str) -> Any:
    """Load a public name from its module the first time it is asked for, then keep it."""
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
