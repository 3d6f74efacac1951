"""smallops: AI operations for small teams.

Every model call goes through a Workflow (a pinned model, a versioned prompt, a typed output, a
review policy and a fallback) and is logged in full, in SQLite or Postgres.
"""

from smallops.config import Settings
from smallops.errors import (
    ConfigError,
    DecidedError,
    HeldError,
    InputError,
    MissingExtraError,
    MissingFallbackError,
    NotFoundError,
    ProviderError,
    SmallopsError,
    StorageError,
    TemplateError,
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
