"""Exact binomial confidence bounds, for deciding from few reviews whether a class is reliable."""

from __future__ import annotations

import math
from collections.abc import Callable


def clopper_pearson_lower(successes: int, trials: int, confidence: float = 0.95) -> float:
    """The one-sided Clopper-Pearson lower bound on a success rate.

    The p at which seeing `successes` or more in `trials` has probability 1 - confidence: with
    59 approvals of 59 it is 0.9505, the classic "59 in a row" for 95% at 95% confidence.
    """
    if trials <= 0 or successes <= 0:
        return 0.0
    if successes > trials:
        raise ValueError("successes cannot exceed trials")
    alpha = 1 - confidence
    if successes == trials:
        return float(alpha ** (1 / trials))
    low, high = 0.0, 1.0
    for _ in range(100):  # bisection: the upper tail grows with p
        mid = (low + high) / 2
        if _upper_tail(successes, trials, mid) < alpha:
            low = mid
        else:
            high = mid
    return low


def _upper_tail(successes: float, trials: float, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, p) = I_p(successes, trials - successes + 1)."""
    return _regularized_beta(p, successes, trials - successes + 1)


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (Lentz), accurate to ~1e-14."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _regularized_beta(1 - x, b, a)
    return math.exp(log_front) * _beta_fraction(x, a, b) / a


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return result


def clears(successes: float, trials: float, target: float, confidence: float = 0.95) -> bool:
    """Whether the lower bound of `successes` in `trials` is at least `target`, by one tail
    evaluation rather than a search (successes may be fractional: see `reviews_needed`)."""
    if successes <= 0:
        return target <= 0
    return _upper_tail(successes, trials, target) <= 1 - confidence


NEEDED_LIMIT = 1_000_000  # beyond this many more reviews, "more than a million" is answer enough


def reviews_needed(
    successes: int, trials: int, target: float, confidence: float = 0.95
) -> int | None:
    """The fewest more reviews, approved at the rate seen so far, that lift the bound to `target`.

    After k more reviews, floor(k * successes / trials) of them are approved (every one while
    there are no reviews yet). The bound is not monotone in k: it rises with each approval and
    drops with each rejection. So the search first finds where a smooth upper envelope (the same
    rate without rounding, which only grows with k) reaches the target, since no k before that
    can, then walks on one run of approvals at a time: within a run the bound only rises.

    None when the rate so far is not above the target (more reviews at that rate never will), or
    when more than NEEDED_LIMIT reviews would be needed.
    """
    if clears(successes, trials, target, confidence):
        return 0
    if trials and successes <= target * trials:
        return None
    rejected = trials - successes

    def enough(extra: int) -> bool:
        approved = successes + (successes * extra // trials if trials else extra)
        return clears(approved, trials + extra, target, confidence)

    def envelope(extra: int) -> bool:
        rate = successes / trials if trials else 1.0
        return clears(rate * (trials + extra), trials + extra, target, confidence)

    if not envelope(NEEDED_LIMIT):
        return None
    extra = _first(envelope, 1, NEEDED_LIMIT)
    while extra <= NEEDED_LIMIT:
        # the run of approvals that `extra` is in ends before the next rejection
        if rejected == 0:
            end = NEEDED_LIMIT
        else:
            rejections = -(-rejected * extra // trials)
            end = min(rejections * trials // rejected, NEEDED_LIMIT)
        if enough(end):
            return _first(enough, extra, end)
        extra = end + 1
    return None


def _first(holds: Callable[[int], bool], low: int, high: int) -> int:
    """The least n in [low, high] for which `holds(n)`, given that it holds at high and, once it
    holds, holds for every larger n up to high."""
    while low < high:
        mid = (low + high) // 2
        if holds(mid):
            high = mid
        else:
            low = mid + 1
    return low
