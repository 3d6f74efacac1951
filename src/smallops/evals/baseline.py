"""Baselines: the approved per-case results a pull request is compared against.

`evals/<workflow>.baseline.json` is written by `smallops eval --update-baseline` and committed;
`smallops eval --ci` compares a fresh run with it case by case. The baseline also records which
cases are critical, so deleting a critical case (or its tag) from the eval set cannot get past
the gate: dropping one is a change to the committed baseline, made on purpose and reviewed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from smallops.errors import ConfigError
from smallops.evals.runner import EvalRun
from smallops.evals.verdict import CaseOutcome, GateResult, gate


@dataclass(frozen=True)
class Baseline:
    path: Path
    prompt_version: str
    model: str
    date: str
    scores: dict[str, float]
    critical: frozenset[str] = field(default_factory=frozenset)


def baseline_path(evals_path: Path) -> Path:
    return evals_path.with_name(evals_path.stem + ".baseline.json")


def write_baseline(path: Path, run: EvalRun) -> None:
    """Write the run's per-case results (whole file, then rename: never half-written)."""
    scores = run.scores()
    fields: dict[str, dict[str, bool]] = {}
    for result in run.results:
        for check in result.fields:
            previous = fields.setdefault(result.case.id, {}).get(check.field, True)
            fields[result.case.id][check.field] = previous and check.passed
    data: dict[str, Any] = {
        "workflow": run.workflow.name,
        "prompt_version": run.workflow.version.id,
        "model": str(run.workflow.model),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "repeat": run.repeat,
        "pass_rate": round(run.passed / len(scores), 4) if scores else None,
        "cases": {
            case.id: {
                "score": scores.get(case.id, 0.0),
                "critical": case.critical,
                "fields": fields.get(case.id, {}),
            }
            for case in run.cases
        },
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(path)


def read_baseline(path: Path) -> Baseline | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Baseline(
            path=path,
            prompt_version=str(data["prompt_version"]),
            model=str(data["model"]),
            date=str(data.get("date", "")),
            scores={case: float(v["score"]) for case, v in data["cases"].items()},
            critical=frozenset(c for c, v in data["cases"].items() if v.get("critical") is True),
        )
    except (
        json.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        RecursionError,
    ) as exc:
        raise ConfigError(
            f"baseline {path} is not readable: {exc}",
            hint="regenerate it with `smallops eval WORKFLOW --update-baseline`",
        ) from None


def compare(baseline: Baseline, run: EvalRun, *, seed: int = 0) -> GateResult:
    """Case-by-case: baseline cases missing now count as failures (a critical one is a
    regression); new cases are listed. A case is critical if the baseline or the run says so."""
    current = run.scores()
    critical = baseline.critical | {case.id for case in run.cases if case.critical}
    ids = list(baseline.scores) + [case for case in current if case not in baseline.scores]
    outcomes = [
        CaseOutcome(
            case_id=case,
            baseline=baseline.scores.get(case),
            current=current.get(case),
            critical=case in critical,
        )
        for case in ids
    ]
    return gate(outcomes, seed=seed)
