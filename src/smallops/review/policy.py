"""Review policies: which outputs a human sees before the application acts on them.

"all"               every output (the default: a new workflow earns trust first)
"none"              no output
"always"            every output, for good: customer-facing work never graduates
sample(0.1)         a random tenth of the outputs
until_graduated()   every output whose classes have not yet proven reliable; afterwards a
                    random audit sample (5%) still goes to review
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from smallops.errors import ConfigError
from smallops.kinds import GRADUATION_ROUTES as GRADUATION_ROUTES
from smallops.kinds import REVIEWED_ROUTES, ReviewRoute

NAMED = ("all", "none", "always")


@dataclass(frozen=True)
class ReviewPolicy:
    """A review policy; `str(policy)` is what every run records."""

    kind: str
    rate: float = 1.0
    target: float = 0.95
    min_days: int = 30
    audit: float = 0.05

    def __str__(self) -> str:
        if self.kind == "sample":
            return f"sample({self.rate:g})"
        if self.kind == "until_graduated":
            return f"until_graduated({self.target:g})"
        return self.kind

    def route(self, classes: list[str], graduated: Callable[[list[str]], bool]) -> ReviewRoute:
        """Where one valid output goes: a route name; `needs_review(route)` tells which way."""
        if self.kind == "none":
            return "none"
        if self.kind in ("all", "always"):
            return "required"
        if self.kind == "sample":
            return "sampled" if random.random() < self.rate else "sampled_out"
        if not classes or not graduated(classes):
            return "not_graduated"
        return "audit" if random.random() < self.audit else "graduated"


def needs_review(route: ReviewRoute) -> bool:
    return route in REVIEWED_ROUTES


def sample(rate: float) -> ReviewPolicy:
    """Review a random fraction `rate` (0 to 1) of the outputs."""
    if not 0 < rate <= 1:
        raise ConfigError(f"sample({rate}) needs a rate above 0 and at most 1")
    return ReviewPolicy("sample", rate=rate)


def until_graduated(
    target: float = 0.95, *, min_days: int = 30, audit: float = 0.05
) -> ReviewPolicy:
    """Review each output class until its approval rate is proven at `target`.

    A class (a value of an enum or Literal field, e.g. `category=spam`) is auto-actioned once it
    has `min_days` of reviews and the one-sided 95% Clopper-Pearson lower bound of its approvals
    without edits reaches `target`; `audit` of its outputs are still reviewed.
    """
    if not 0 < target < 1 or min_days < 0 or not 0 <= audit <= 1:
        raise ConfigError("until_graduated needs 0 < target < 1, min_days >= 0 and 0 <= audit <= 1")
    return ReviewPolicy("until_graduated", target=target, min_days=min_days, audit=audit)


def parse_policy(value: str | ReviewPolicy, workflow: str) -> ReviewPolicy:
    if isinstance(value, ReviewPolicy):
        return value
    if value in NAMED:
        return ReviewPolicy(value)
    raise ConfigError(
        f"workflow {workflow!r}: unknown review policy {value!r}",
        hint='use "all", "none", "always", smallops.sample(rate) or smallops.until_graduated()',
    )
