"""Exact binomial confidence bounds, for deciding from few reviews whether a class is reliable."""

from __future__ import annotations

import math


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


def _upper_tail(successes: int, trials: int, p: float) -> float:
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


def reviews_needed(
    successes: int, trials: int, target: float, confidence: float = 0.95
) -> int | None:
    """About how many more reviews, approved at the rate seen so far, lift the bound to `target`.

    None when the rate seen so far is not above the target: more reviews at that rate never will.
    With no reviews yet, the answer assumes every review is approved.
    """
    if clopper_pearson_lower(successes, trials, confidence) >= target:
        return 0
    rate = successes / trials if trials else 1.0
    if rate <= target:
        return None
    low, high = 0, 1
    while _bound_after(successes, trials, rate, high, confidence) < target:
        high *= 2
        if high > 10_000_000:
            return None
    while low + 1 < high:
        mid = (low + high) // 2
        if _bound_after(successes, trials, rate, mid, confidence) >= target:
            high = mid
        else:
            low = mid
    return high


def _bound_after(successes: int, trials: int, rate: float, extra: int, confidence: float) -> float:
    more = successes + math.floor(rate * extra + 1e-9)
    return clopper_pearson_lower(min(more, trials + extra), trials + extra, confidence)
