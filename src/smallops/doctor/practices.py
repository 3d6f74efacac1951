"""The playbook's practices by team size, each judged pass / warn / fail, and the scorecard.

A practice fails when the project does not follow it, and warns when it follows it only in part
or the log cannot show it yet (no calls, an eval set under 20 examples). A tier is met when none
of its practices fails; a target tier when it and every tier below it are met. Warnings never
fail a tier: they are the next thing to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

Status = Literal["pass", "warn", "fail"]
STATUSES: tuple[Status, ...] = get_args(Status)

#: 1: under 10 people; 2: 10 to 25; 3: 25 to 50.
Tier = Literal[1, 2, 3]
TIERS: tuple[Tier, ...] = get_args(Tier)
TEAM_SIZES: dict[Tier, str] = {1: "under 10 people", 2: "10 to 25 people", 3: "25 to 50 people"}

PracticeId = Literal[
    "every_call_logged",
    "one_workflow_in_production",
    "human_review_first_month",
    "structured_outputs",
    "cost_tracked",
    "eval_sets",
    "secrets_from_a_store",
    "evals_in_ci",
    "rate_limits_and_breakers",
    "pinned_models_drift_checked",
    "alerts_to_an_owner",
    "documented_fallback",
]
PRACTICE_IDS: tuple[PracticeId, ...] = get_args(PracticeId)


@dataclass(frozen=True)
class Practice:
    """One practice of the playbook: its tier, its title, and a short label for one-line views."""

    id: PracticeId
    tier: Tier
    title: str
    label: str


PRACTICES: dict[PracticeId, Practice] = {
    p.id: p
    for p in (
        Practice("every_call_logged", 1, "Every call logged", "logged"),
        Practice("one_workflow_in_production", 1, "One workflow in production", "in production"),
        Practice("human_review_first_month", 1, "Human review, first month", "human review"),
        Practice("structured_outputs", 2, "Structured outputs", "structured"),
        Practice("cost_tracked", 2, "Cost tracked", "cost"),
        Practice("eval_sets", 2, "Eval set of 20-50 examples", "eval sets"),
        Practice("secrets_from_a_store", 2, "Secrets from a store", "secrets"),
        Practice("evals_in_ci", 3, "Evals in CI", "evals in CI"),
        Practice("rate_limits_and_breakers", 3, "Rate limits and breakers", "limits"),
        Practice("pinned_models_drift_checked", 3, "Pinned models, drift checked", "drift"),
        Practice("alerts_to_an_owner", 3, "Alerts to an owner", "alerts"),
        Practice("documented_fallback", 3, "Documented fallback", "fallback"),
    )
}


@dataclass(frozen=True)
class Finding:
    """How the project stands on one practice: one line of evidence, and the one-line fix
    (None when it passes)."""

    practice: PracticeId
    status: Status
    evidence: str
    fix: str | None = None

    @property
    def tier(self) -> Tier:
        return PRACTICES[self.practice].tier

    @property
    def title(self) -> str:
        return PRACTICES[self.practice].title


@dataclass(frozen=True)
class Scorecard:
    """Every practice's finding, in the playbook's order."""

    root: Path
    findings: tuple[Finding, ...]

    def of_tier(self, tier: Tier) -> list[Finding]:
        return [f for f in self.findings if f.tier == tier]

    def counts(self, tier: Tier) -> dict[Status, int]:
        found = [f.status for f in self.of_tier(tier)]
        return {status: found.count(status) for status in STATUSES}

    def met(self, tier: Tier) -> bool:
        """The tier and every tier below it have no failing practice."""
        return not self.failing(tier)

    def failing(self, target: Tier) -> list[Finding]:
        """The failing practices of the target tier and the tiers below it."""
        return [f for f in self.findings if f.tier <= target and f.status == "fail"]

    def as_dict(self, target: Tier) -> dict[str, Any]:
        """The stable JSON form: the same for `smallops doctor --json` and the web page."""
        return {
            "project": str(self.root),
            "target_tier": target,
            "met": self.met(target),
            "tiers": [
                {
                    "tier": tier,
                    "team_size": TEAM_SIZES[tier],
                    "judged": tier <= target,
                    "met": self.met(tier),
                    **self.counts(tier),
                }
                for tier in TIERS
            ],
            "practices": [
                {
                    "id": f.practice,
                    "tier": f.tier,
                    "title": f.title,
                    "status": f.status,
                    "judged": f.tier <= target,
                    "evidence": f.evidence,
                    "fix": f.fix,
                }
                for f in self.findings
            ],
        }


_RANK: dict[Status, int] = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Item:
    """One workflow's (or provider's) standing on a practice."""

    status: Status
    evidence: str
    fix: str | None = None


def combine(practice: PracticeId, items: list[Item]) -> Finding:
    """A practice's finding from its items: the first of the worst speaks for all (with how
    many more are like it); when every item passes, their evidence together, as fits a line."""
    worst = max(items, key=lambda item: _RANK[item.status])
    if worst.status == "pass":
        return Finding(practice, "pass", joined([item.evidence for item in items]))
    alike = sum(1 for item in items if item.status == worst.status) - 1
    more = f" (and {alike} more)" if alike else ""
    return Finding(practice, worst.status, worst.evidence + more, worst.fix)


def joined(parts: list[str], limit: int = 60) -> str:
    """Parts joined by "; " while they fit in `limit` characters, then "and N more"."""
    text = parts[0]
    for n, part in enumerate(parts[1:], start=1):
        if len(text) + 2 + len(part) > limit:
            return f"{text} (and {len(parts) - n} more)"
        text += "; " + part
    return text


def no_workflow(practice: PracticeId) -> Finding:
    """A practice about workflows, in a project with none yet."""
    return Finding(practice, "warn", "no workflow yet", "see One workflow in production")
