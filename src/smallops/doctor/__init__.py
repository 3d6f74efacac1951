"""`smallops doctor`: the playbook as a scorecard of this project.

The practices grow with the team:

    tier 1, under 10 people    every call logged; one workflow in production; human review
                               in force for its first month
    tier 2, 10 to 25 people    structured outputs; cost tracked; an eval set of 20-50
                               examples per workflow; secrets from a store
    tier 3, 25 to 50 people    evals in CI; rate limits and breakers; pinned models with a
                               recent drift check; alerts to an owner; a documented fallback

Each is checked against the project as it is (smallops.toml, the workflows `smallops check`
loads, the CI files, the eval sets) and its log (read, never written), and gets pass, warn or
fail with one line of evidence and a one-line fix (practices.py says what each status means).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from smallops.doctor import tier1, tier2, tier3
from smallops.doctor.facts import LogState, Subject, read_log
from smallops.doctor.practices import (
    PRACTICES,
    TEAM_SIZES,
    TIERS,
    Finding,
    Scorecard,
    Status,
    Tier,
)

if TYPE_CHECKING:
    from smallops.project import Project

Judge = Callable[[Subject, LogState, datetime], Finding]
#: One judge per practice, in the playbook's order.
JUDGES: tuple[Judge, ...] = (
    tier1.every_call_logged,
    tier1.one_workflow_in_production,
    tier1.human_review_first_month,
    tier2.structured_outputs,
    tier2.cost_tracked,
    tier2.eval_sets,
    tier2.secrets_from_a_store,
    tier3.evals_in_ci,
    tier3.rate_limits_and_breakers,
    tier3.pinned_models_drift_checked,
    tier3.alerts_to_an_owner,
    tier3.documented_fallback,
)

__all__ = [
    "PRACTICES",
    "TEAM_SIZES",
    "TIERS",
    "Finding",
    "LogState",
    "Scorecard",
    "Status",
    "Subject",
    "Tier",
    "examine",
    "judge",
    "read_log",
]


def judge(subject: Subject, log: LogState, now: datetime | None = None) -> Scorecard:
    """The scorecard of gathered facts (the web page gathers the log its own way)."""
    now = now or datetime.now(timezone.utc)
    return Scorecard(subject.root, tuple(check(subject, log, now) for check in JUDGES))


def examine(project: Project, now: datetime | None = None) -> Scorecard:
    """The scorecard of a project on disk and its log."""
    now = now or datetime.now(timezone.utc)
    workflows, broken = project.load_workflows()
    subject = Subject(project.root, project.settings, workflows, broken)
    return judge(subject, read_log(project.settings, project.engine, now), now)
