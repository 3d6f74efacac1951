"""The regression gate: is this run worse than the committed baseline, or is it noise?

An eval set has 20-50 cases, and each case has its own difficulty: an easy case almost never
fails, a hard one fails half the time whatever the prompt. Comparing two pass rates treats those
as one coin and drowns a real drop in case-to-case variance. So the gate is paired: it looks at
each case in both runs and counts only the cases that changed. `worse` (b) passed in the baseline
and fail now; `better` (c) failed and pass now. If the change did nothing, each of those b + c
discordant cases is as likely to have gone one way as the other, so the exact sign test
P(X >= b), X ~ Binomial(b + c, 1/2) is the chance of seeing this many flips to worse by luck.

The other numbers are there to be read, not to decide: the mean scores over the paired cases,
a paired bootstrap interval for the mean change per case, the pass rates with Wilson intervals,
and `min_detectable`, the fewest pass->fail flips (with nothing improving) that this set could
ever call a regression. A critical case that flips is a regression whatever the statistics, and
it passes only when it passes every repeat.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from smallops.stats import min_detectable_flips, paired_bootstrap, sign_test_worse, wilson

Verdict = Literal["pass", "inconclusive", "regression"]


def passes(score: float, critical: bool = False, threshold: float = 0.5) -> bool:
    """Whether a case with this score (its share of repeats passed) passes: at `threshold`,
    or, for a critical case, on every repeat (1.0 -> 0.5 is a critical case failing)."""
    return score >= (1.0 if critical else threshold)


@dataclass(frozen=True)
class CaseOutcome:
    """One case's score (in [0, 1], the share of repeats passed) in the baseline and now.

    `baseline` None: a new case, not compared. `current` None: missing now, scored 0 (and a
    regression if the case is critical).
    """

    case_id: str
    baseline: float | None
    current: float | None
    critical: bool = False


@dataclass(frozen=True)
class GateResult:
    verdict: Verdict
    reasons: list[str]
    paired: int  # cases in the baseline (a case missing now counts, with score 0)
    worse: int  # b: passed in the baseline, fail now
    better: int  # c: failed in the baseline, pass now
    sign_test_p: float  # P(X >= b), X ~ Binomial(b + c, 1/2); 1.0 when b == 0
    mean_baseline: float  # mean score over the paired cases
    mean_current: float
    diff_ci: tuple[float, float]  # 95% paired bootstrap interval for mean(current - baseline)
    rate_baseline: tuple[float, float, float]  # pass rate, Wilson 95% low, high
    rate_current: tuple[float, float, float]
    min_detectable: int  # fewest flips to worse (none better) significant at alpha
    min_detectable_rate: float  # min_detectable / paired (1.0 when nothing is paired)
    new_cases: list[str]
    missing_cases: list[str]


def gate(
    outcomes: Sequence[CaseOutcome], *, alpha: float = 0.05, threshold: float = 0.5, seed: int = 0
) -> GateResult:
    """Compare the current run with the baseline case by case; passing is `passes`.

    "regression": a critical case flipped to fail or went missing, or p < alpha with worse >
    better. "pass": worse <= better. Otherwise "inconclusive", with what this set can detect.
    """
    seen: set[str] = set()
    pairs: list[tuple[CaseOutcome, float, float]] = []
    new_cases: list[str] = []
    missing: list[str] = []
    for case in outcomes:
        if case.case_id in seen:
            raise ValueError(f"duplicate case id {case.case_id!r}")
        seen.add(case.case_id)
        if any(s is not None and not 0.0 <= s <= 1.0 for s in (case.baseline, case.current)):
            raise ValueError(f"case {case.case_id!r}: scores must be in [0, 1]")
        if case.baseline is None:
            if case.current is not None:
                new_cases.append(case.case_id)
            continue
        if case.current is None:
            missing.append(case.case_id)
        pairs.append((case, case.baseline, 0.0 if case.current is None else case.current))

    def passing(case: CaseOutcome, score: float) -> bool:
        return passes(score, case.critical, threshold)

    paired = len(pairs)
    worse = [c for c, base, now in pairs if passing(c, base) and not passing(c, now)]
    better = sum(1 for c, base, now in pairs if passing(c, now) and not passing(c, base))
    b = len(worse)
    p = sign_test_worse(b, better)
    flips = min_detectable_flips(paired, alpha)

    counts = f"{_cases(b)} got worse and {better} better (p = {p:.2g})"
    on = f"on {_cases(paired)}"
    reasons = [
        f"critical case {c.case_id} of the baseline is missing now (drop it on purpose with "
        "--update-baseline)"
        for c, _, _ in pairs
        if c.critical and c.current is None
    ]
    reasons += [
        f"critical case {c.case_id} went from pass to fail"
        for c in worse
        if c.critical and c.current is not None
    ]
    verdict: Verdict
    if paired == 0:
        verdict = "inconclusive"
        reasons.append("no case is in both the baseline and the current run: nothing to compare")
    elif reasons:
        verdict = "regression"
        reasons.append(f"{counts} {on}")
    elif p < alpha and b > better:
        verdict = "regression"
        reasons.append(f"{counts}: a regression {on} at alpha = {alpha:g}")
    elif b <= better:
        verdict = "pass"
        reasons.append(f"{counts}: no net regression {on}")
    else:
        verdict = "inconclusive"
        reasons.append(f"{counts}: not enough to call a regression {on}; " + _power(flips, paired))
    if verdict == "pass" and flips > paired:
        reasons.append(_power(flips, paired))
    if missing:
        listed = ", ".join(missing)
        reasons.append(f"{_cases(len(missing))} missing now, counted as failures: {listed}")
    if new_cases:
        listed = ", ".join(new_cases)
        reasons.append(f"{_cases(len(new_cases))} not in the baseline, not compared: {listed}")

    return GateResult(
        verdict=verdict,
        reasons=reasons,
        paired=paired,
        worse=b,
        better=better,
        sign_test_p=p,
        mean_baseline=_mean([base for _, base, _ in pairs]),
        mean_current=_mean([now for _, _, now in pairs]),
        diff_ci=paired_bootstrap([now - base for _, base, now in pairs], seed=seed),
        rate_baseline=_rate(sum(passing(c, base) for c, base, _ in pairs), paired),
        rate_current=_rate(sum(passing(c, now) for c, _, now in pairs), paired),
        min_detectable=flips,
        min_detectable_rate=flips / max(paired, 1),
        new_cases=new_cases,
        missing_cases=missing,
    )


def _cases(n: int) -> str:
    return f"{n} case" if n == 1 else f"{n} cases"


def _power(flips: int, paired: int) -> str:
    if flips > paired:
        return f"this set is too small to call any drop a regression (it takes {flips} flips)"
    return f"this set detects a drop of {_cases(flips)} ({flips / paired:.1%}) or more"


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def _rate(successes: int, trials: int) -> tuple[float, float, float]:
    return (successes / trials if trials else 0.0, *wilson(successes, trials))
