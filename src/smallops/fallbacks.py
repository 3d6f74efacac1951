"""Where a call's work goes when the model fails: `Workflow(fallback=...)`.

"review" (a human does the work), "raise" (WorkflowFailed), `default(value)` (a value the
application can act on), or `secondary(model, then=...)` (another model, with its own guards,
and then `then`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smallops.kinds import FallbackKind


@dataclass(frozen=True)
class Fallback:
    """Where a failed call's work goes: a human (`review`), a default value, another model
    (`secondary`), or an exception (`raise`)."""

    kind: FallbackKind
    value: Any = None


def default(value: Any) -> Fallback:
    """A fallback that answers with `value` (validated against the workflow's output)."""
    return Fallback("default", value)


def secondary(model: str, then: str | Fallback = "review") -> Fallback:
    """A fallback to another model (e.g. Anthropic when OpenAI is down), then to `then`."""
    return Fallback("secondary", (model, then))
