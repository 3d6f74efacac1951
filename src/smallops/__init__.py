"""smallops: AI operations for small teams.

Every model call goes through a Workflow (a pinned model, a versioned prompt, a typed output, a
review policy and a fallback) and is logged in full, in SQLite or Postgres.
"""

from smallops.config import Settings
from smallops.errors import (
    ConfigError,
    InputError,
    MissingExtraError,
    MissingFallbackError,
    NotFoundError,
    SmallopsError,
    StorageError,
    TemplateError,
    UnknownWorkflowError,
    UnpinnedModelError,
    WorkflowFailed,
)
from smallops.plan import Fallback, default, secondary
from smallops.providers import FakeProvider, FakeReply, FakeRequest, Provider, ProviderError, Usage
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
    "Decision",
    "FakeProvider",
    "FakeReply",
    "FakeRequest",
    "Fallback",
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
