"""The statistics smallops decides with, for small samples: exact binomial bounds (is a review
class reliable enough to automate?), the sign test, Wilson intervals and a paired bootstrap (did
a prompt change make the eval set worse?), and a chi-square test (did a label's distribution
shift in production?). Pure functions of counts; no dependencies."""

from __future__ import annotations

import functools
import math
import random
import statistics
from collections.abc import Callable, Sequence


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
    return regularized_beta(p, successes, trials - successes + 1)


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (Lentz), accurate to ~1e-14."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_beta(1 - x, b, a)
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


def sign_test_worse(worse: int, better: int) -> float:
    """Exact one-sided sign test: P(X >= worse), X ~ Binomial(worse + better, 1/2)."""
    if worse < 0 or better < 0:
        raise ValueError("counts cannot be negative")
    if worse == 0:
        return 1.0
    return min(1.0, max(0.0, regularized_beta(0.5, worse, better + 1)))


def min_detectable_flips(paired: int, alpha: float = 0.05) -> int:
    """Smallest b with 0.5**b < alpha (b flips to worse, none better); paired + 1 if none fits."""
    for flips in range(1, paired + 1):
        if 0.5**flips < alpha:
            return flips
    return paired + 1


def wilson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Wilson score interval for a rate; (0, 1) with no trials."""
    if not 0 <= successes <= trials:
        raise ValueError("need 0 <= successes <= trials")
    if trials == 0:
        return (0.0, 1.0)
    z = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    rate, z2 = successes / trials, z * z / trials
    centre = (rate + z2 / 2) / (1 + z2)
    half = z / (1 + z2) * math.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return (low, high)


def paired_bootstrap(
    diffs: Sequence[float], *, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean per-case difference (current - baseline).

    Deterministic for a seed and cached; sorting first makes it independent of case order.
    """
    if not diffs:
        return (0.0, 0.0)
    return _bootstrap(tuple(sorted(diffs)), resamples, confidence, seed)


@functools.lru_cache(maxsize=256)
def _bootstrap(
    diffs: tuple[float, ...], resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    rng, n = random.Random(seed), len(diffs)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    return (_percentile(means, tail), _percentile(means, 1 - tail))


def _percentile(ordered: Sequence[float], q: float) -> float:  # linear, as numpy's default
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def chi_square_test(table: Sequence[Sequence[int]]) -> tuple[float, int, float]:
    """Pearson's chi-square test of independence: (statistic, degrees of freedom, p-value).

    All-zero rows and columns are dropped first; p is 1.0 when no degree of freedom is left.
    """
    if len({len(row) for row in table}) > 1:
        raise ValueError("every row needs the same number of columns")
    if any(count < 0 for row in table for count in row):
        raise ValueError("counts cannot be negative")
    rows = [row for row in table if any(row)]
    keep = [j for j in range(len(rows[0]) if rows else 0) if any(row[j] for row in rows)]
    cells = [[row[j] for j in keep] for row in rows]
    df = (len(cells) - 1) * (len(keep) - 1) if cells else 0
    if df == 0:
        return (0.0, 0, 1.0)
    col_sums = [sum(column) for column in zip(*cells, strict=True)]
    total = sum(col_sums)
    expected = [[sum(row) * col / total for col in col_sums] for row in cells]
    statistic = math.fsum(
        (seen - want) ** 2 / want
        for row, wants in zip(cells, expected, strict=True)
        for seen, want in zip(row, wants, strict=True)
    )
    return (statistic, df, chi_square_sf(statistic, df))


def chi_square_sf(statistic: float, df: int) -> float:
    """P(chi-square with df degrees of freedom > statistic) = Q(df/2, statistic/2)."""
    if df < 1:
        raise ValueError("df must be at least 1")
    if statistic <= 0:
        return 1.0
    a, x = df / 2, statistic / 2
    front = math.exp(a * math.log(x) - x - math.lgamma(a))
    if x < a + 1:  # the series for the lower P(a, x) converges fast here
        term = total = 1 / a
        for k in range(1, 10_000):
            term *= x / (a + k)
            total += term
            if abs(term) < abs(total) * 1e-17:
                break
        return max(0.0, 1.0 - front * total)
    tiny = 1e-300  # the continued fraction for Q(a, x) by modified Lentz
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    result = d
    for k in range(1, 10_000):
        numerator = -k * (k - a)
        b += 2
        d = numerator * d + b
        d = 1 / (d if abs(d) > tiny else tiny)
        c = b + numerator / c
        c = c if abs(c) > tiny else tiny
        result *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return front * result
