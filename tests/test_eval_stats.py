"""The eval regression gate: reference values from scipy, verdict rules, power, false alarms."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from scipy import stats as sp

from smallops.evals.verdict import CaseOutcome, gate
from smallops.stats import (
    chi_square_sf,
    chi_square_test,
    min_detectable_flips,
    paired_bootstrap,
    sign_test_worse,
    wilson,
)

# A 40-case set with per-case difficulty: the probability that a case fails on any one run.
P_FAIL: tuple[float, ...] = (0.02,) * 28 + (0.15,) * 8 + (0.4,) * 4


def simulate(
    trials: int,
    broken_fraction: float,
    seed: int,
    *,
    p_fail: Sequence[float] = P_FAIL,
    repeat: int = 1,
) -> Counter[str]:
    """Gate verdicts over `trials` simulated (baseline, current) pairs of runs of one eval set.

    Baseline and current outcomes are drawn independently from each case's own failure
    probability (a score is the share of `repeat` runs that passed); in the current run a random
    `broken_fraction` of the cases always fails. No case is critical.
    """
    rng = random.Random(seed)
    n = len(p_fail)

    def score(p: float) -> float:
        return sum(rng.random() >= p for _ in range(repeat)) / repeat

    verdicts: Counter[str] = Counter()
    for _ in range(trials):
        broken = set(rng.sample(range(n), round(broken_fraction * n)))
        outcomes = [
            CaseOutcome(f"case-{i:03d}", score(p), 0.0 if i in broken else score(p))
            for i, p in enumerate(p_fail)
        ]
        verdicts[gate(outcomes).verdict] += 1
    return verdicts


def outcome(
    case_id: str, before: float | None, now: float | None, critical: bool = False
) -> CaseOutcome:
    return CaseOutcome(case_id, before, now, critical)


def same(n: int, score: float = 1.0) -> list[CaseOutcome]:
    return [outcome(f"c{i}", score, score) for i in range(n)]


# Reference values


def test_sign_test_matches_scipy_binomtest() -> None:
    for worse in range(31):
        for better in range(31):
            ours = sign_test_worse(worse, better)
            if worse == 0:
                assert ours == 1.0
                continue
            ref = sp.binomtest(worse, worse + better, 0.5, alternative="greater").pvalue
            assert ours == pytest.approx(ref, rel=1e-10, abs=1e-15), (worse, better)


def test_wilson_known_values_and_closed_form() -> None:
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(20, 40) == pytest.approx((0.3520, 0.6480), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    for trials in (1, 7, 20, 40, 50, 333):
        for successes in range(trials + 1):
            for confidence in (0.9, 0.95, 0.99):
                z = sp.norm.ppf(1 - (1 - confidence) / 2)
                p = successes / trials
                centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
                half = (
                    z
                    / (1 + z * z / trials)
                    * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
                )
                low, high = wilson(successes, trials, confidence)
                assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
                assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)
                assert 0.0 <= low <= p <= high <= 1.0


def test_chi_square_sf_matches_scipy_over_a_grid() -> None:
    worst = 0.0
    for df in range(1, 31):
        for statistic in np.linspace(0.0, 100.0, 401):
            ours = chi_square_sf(float(statistic), df)
            worst = max(worst, abs(ours - sp.chi2.sf(statistic, df)))
    assert worst < 1e-9
    assert chi_square_sf(0.0, 3) == 1.0
    with pytest.raises(ValueError):
        chi_square_sf(1.0, 0)


@pytest.mark.parametrize(
    "table",
    [
        [[12, 5], [7, 16]],
        [[30, 10], [2, 1]],
        [[3, 8, 1, 9, 4], [7, 2, 6, 1, 5]],
        [[5, 0, 3, 9], [2, 0, 8, 1], [6, 0, 4, 4]],
        [[5, 3, 9], [0, 0, 0], [2, 8, 1]],
    ],
)
def test_chi_square_test_matches_scipy(table: list[list[int]]) -> None:
    array = np.array(table)
    array = array[array.sum(axis=1) > 0][:, array.sum(axis=0) > 0]
    ref = sp.chi2_contingency(array, correction=False)
    statistic, df, p = chi_square_test(table)
    assert statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert df == ref.dof
    assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)


def test_chi_square_test_without_degrees_of_freedom() -> None:
    assert chi_square_test([[4, 6, 0]]) == (0.0, 0, 1.0)
    assert chi_square_test([[4, 0], [6, 0]]) == (0.0, 0, 1.0)
    assert chi_square_test([]) == (0.0, 0, 1.0)
    assert chi_square_test([[0, 0], [0, 0]]) == (0.0, 0, 1.0)


def test_paired_bootstrap_agrees_with_scipy_and_is_deterministic() -> None:
    rng = random.Random(7)
    diffs = [rng.choice([-1.0, -0.5, 0.0, 0.0, 0.0, 0.25, 0.5, 1.0]) for _ in range(40)]
    ours = paired_bootstrap(diffs, seed=3)
    ref = sp.bootstrap(
        (np.array(diffs),),
        np.mean,
        method="percentile",
        confidence_level=0.95,
        n_resamples=10_000,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.02)
    assert ours[1] == pytest.approx(ref.high, abs=0.02)
    assert paired_bootstrap(diffs, seed=3) == ours
    assert paired_bootstrap(list(reversed(diffs)), seed=3) == ours
    assert paired_bootstrap([0.0] * 30) == (0.0, 0.0)
    assert paired_bootstrap([]) == (0.0, 0.0)


def test_paired_bootstrap_is_fast() -> None:
    diffs = [random.Random(11).uniform(-1, 1) for _ in range(100)]
    start = time.perf_counter()
    paired_bootstrap(diffs, seed=12345)
    assert time.perf_counter() - start < 1.0


def test_min_detectable_flips() -> None:
    assert min_detectable_flips(40) == 5  # 0.5**4 = 0.0625, 0.5**5 = 0.031
    assert min_detectable_flips(40, alpha=0.01) == 7
    assert min_detectable_flips(5) == 5
    assert min_detectable_flips(4) == 5  # even 4 of 4 flipping is not significant
    assert min_detectable_flips(0) == 1


# Verdict rules


def test_all_same_passes() -> None:
    result = gate(same(40))
    assert result.verdict == "pass"
    assert (result.paired, result.worse, result.better, result.sign_test_p) == (40, 0, 0, 1.0)
    assert result.mean_baseline == result.mean_current == 1.0
    assert result.diff_ci == (0.0, 0.0)
    assert result.rate_baseline == result.rate_current == (1.0, *wilson(40, 40))
    assert (result.min_detectable, result.min_detectable_rate) == (5, 0.125)
    assert result.reasons


def test_a_critical_flip_is_a_regression_even_when_everything_else_improved() -> None:
    outcomes = [outcome(f"up{i}", 0.0, 1.0) for i in range(10)]
    outcomes += [*same(20), outcome("triage-007", 1.0, 0.0, critical=True)]
    result = gate(outcomes)
    assert (result.worse, result.better) == (1, 10)
    assert result.sign_test_p > 0.99
    assert result.verdict == "regression"
    assert "critical case triage-007 went from pass to fail" in result.reasons


def test_a_critical_case_that_keeps_passing_or_failing_decides_nothing() -> None:
    outcomes = [*same(30), outcome("k1", 1.0, 1.0, True), outcome("k2", 0.0, 0.0, True)]
    assert gate(outcomes).verdict == "pass"


def test_significant_flips_are_a_regression() -> None:
    outcomes = same(34) + [outcome(f"w{i}", 1.0, 0.0) for i in range(6)]
    result = gate(outcomes)
    assert result.verdict == "regression"
    assert result.sign_test_p == pytest.approx(0.5**6)
    assert result.diff_ci[1] < 0
    assert result.rate_current[0] == pytest.approx(34 / 40)


def test_a_few_flips_are_inconclusive_and_say_what_the_set_can_detect() -> None:
    outcomes = same(36) + [outcome(f"w{i}", 1.0, 0.0) for i in range(3)]
    outcomes.append(outcome("b0", 0.0, 1.0))
    result = gate(outcomes)
    assert result.verdict == "inconclusive"
    assert result.sign_test_p == pytest.approx(5 / 16)
    assert result.reasons == [
        "3 cases got worse and 1 better (p = 0.31): not enough to call a regression on 40 cases;"
        " this set detects a drop of 5 cases (12.5%) or more"
    ]


def test_as_many_better_as_worse_passes() -> None:
    outcomes = same(30) + [outcome(f"w{i}", 1.0, 0.0) for i in range(4)]
    outcomes += [outcome(f"b{i}", 0.0, 1.0) for i in range(4)]
    assert gate(outcomes).verdict == "pass"


def test_missing_cases_count_as_failures() -> None:
    outcomes = same(34) + [outcome(f"gone-{i}", 1.0, None) for i in range(6)]
    result = gate(outcomes)
    assert result.missing_cases == [f"gone-{i}" for i in range(6)]
    assert (result.paired, result.worse) == (40, 6)
    assert result.verdict == "regression"
    assert result.mean_current == pytest.approx(34 / 40)
    assert any("missing now, counted as failures" in reason for reason in result.reasons)
    critical = gate([*same(10), outcome("must", 1.0, None, critical=True)])
    assert critical.verdict == "regression"


def test_a_critical_case_of_the_baseline_that_is_missing_is_a_regression_by_name() -> None:
    """Even one that failed in the baseline: dropping a critical case takes a new baseline."""
    for before in (1.0, 0.0):
        result = gate([*same(30), outcome("must", before, None, critical=True)])
        assert result.verdict == "regression"
        assert result.reasons[0].startswith("critical case must of the baseline is missing now")


def test_a_critical_case_passes_only_on_every_repeat() -> None:
    """1.0 -> 0.5 with --repeat 2 is a critical case failing; for another case it still passes."""
    critical = gate([*same(30), outcome("must", 1.0, 0.5, critical=True)])
    assert critical.verdict == "regression" and critical.worse == 1
    assert "critical case must went from pass to fail" in critical.reasons
    assert critical.rate_current[0] == pytest.approx(30 / 31)
    other = gate([*same(30), outcome("other", 1.0, 0.5)])
    assert other.verdict == "pass" and other.worse == 0


def test_new_cases_are_listed_but_not_compared() -> None:
    outcomes = same(30) + [outcome(f"new-{i}", None, 0.0, critical=True) for i in range(8)]
    result = gate(outcomes)
    assert result.verdict == "pass"
    assert result.new_cases == [f"new-{i}" for i in range(8)]
    assert (result.paired, result.worse) == (30, 0)
    assert any("not in the baseline, not compared" in reason for reason in result.reasons)


def test_threshold_applies_to_scores_from_repeats() -> None:
    outcomes = same(34, 0.8) + [outcome(f"w{i}", 0.6, 0.4) for i in range(6)]
    assert gate(outcomes).worse == 6
    assert gate(outcomes, threshold=0.4).worse == 0
    assert gate(outcomes, threshold=0.7).worse == 0


def test_small_and_empty_sets_say_so() -> None:
    tiny = gate(same(3))
    assert tiny.verdict == "pass"
    assert tiny.min_detectable == 4
    assert any("too small" in reason for reason in tiny.reasons)
    empty = gate([])
    assert empty.verdict == "inconclusive"
    assert empty.reasons


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        gate([outcome("a", 1.0, 1.0), outcome("a", 1.0, 0.0)])
    with pytest.raises(ValueError):
        gate([outcome("a", 1.5, 1.0)])


# Power and false alarms, simulated per case


def test_breaking_30_percent_of_cases_is_caught() -> None:
    verdicts = simulate(1000, 0.3, seed=1)
    rate = verdicts["regression"] / 1000
    print(f"\nregression detected when 30% of 40 cases break: {rate:.1%} {dict(verdicts)}")
    assert rate >= 0.95


def test_rerunning_an_unchanged_prompt_rarely_cries_regression() -> None:
    verdicts = simulate(1000, 0.0, seed=2)
    rate = verdicts["regression"] / 1000
    print(f"\nfalse alarms rerunning an unchanged prompt: {rate:.1%} {dict(verdicts)}")
    assert rate <= 0.05
