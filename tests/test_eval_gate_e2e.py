"""The regression gate end to end: a fake model with per-case noise, through the eval runner.

tests/test_eval_stats.py measures the gate's power and false-alarm rate over 1,000 simulated
trials of per-case outcomes; this file runs the same experiment through the real path (the
workflow, the fake provider, the runner, the scorers, the baseline comparison), fewer times.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

from smallops import FakeProvider, Settings, Workflow
from smallops.evals.baseline import Baseline, compare
from smallops.evals.dataset import Case
from smallops.evals.runner import run_eval
from test_eval_stats import P_FAIL

from models import Triage

TRIALS = 40
CASES = [
    Case(f"c{i:02d}", {"text": f"case c{i:02d}"}, {"category": "billing"})
    for i in range(len(P_FAIL))
]


class NoisyModel:
    """Fails case i with probability P_FAIL[i]; the `broken` cases always fail."""

    def __init__(self) -> None:
        self.rng = random.Random(0)
        self.broken: set[str] = set()

    def __call__(self, request: Any) -> dict[str, str]:
        case = request.user.split()[-1]
        index = int(case[1:])
        wrong = case in self.broken or self.rng.random() < P_FAIL[index]
        return {"category": "spam" if wrong else "billing", "urgency": "low", "summary": "x"}


def _trials(tmp_path: Path, broken_fraction: float, seed: int) -> Counter[str]:
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    model = NoisyModel()
    wf = Workflow(
        "noisy",
        model="fake:noisy",
        prompt="p.prompt",
        output=Triage,
        fallback="review",
        provider=FakeProvider(model),
        base_dir=tmp_path,
        retries=0,
        settings=Settings(root=tmp_path, database_url=f"sqlite:///{tmp_path}/log.db"),
    )
    verdicts: Counter[str] = Counter()
    picker = random.Random(seed)
    for trial in range(TRIALS):
        model.rng = random.Random(seed * 100_003 + trial)
        model.broken = set()
        before = asyncio.run(run_eval(wf, CASES, use_cache=False, concurrency=8))
        baseline = Baseline(Path("baseline"), wf.version.id, str(wf.model), "", before.scores())
        broken = round(broken_fraction * len(CASES))
        model.broken = {case.id for case in picker.sample(CASES, broken)}
        after = asyncio.run(run_eval(wf, CASES, use_cache=False, concurrency=8))
        verdicts[compare(baseline, after).verdict] += 1
    return verdicts


def test_breaking_30_percent_of_the_cases_is_called_a_regression(tmp_path):
    verdicts = _trials(tmp_path, 0.30, seed=11)
    rate = verdicts["regression"] / TRIALS
    print(
        f"\n30% of 40 cases broken, {TRIALS} trials through the runner: {dict(verdicts)}, "
        f"regression in {rate:.0%}"
    )
    assert rate >= 0.95


def test_an_unchanged_prompt_under_the_same_noise_is_not_called_a_regression(tmp_path):
    verdicts = _trials(tmp_path, 0.0, seed=12)
    rate = verdicts["regression"] / TRIALS
    print(
        f"\nunchanged prompt, {TRIALS} trials through the runner: {dict(verdicts)}, "
        f"regression in {rate:.0%}"
    )
    assert rate <= 0.05
