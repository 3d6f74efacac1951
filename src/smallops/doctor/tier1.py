"""Tier 1, under 10 people: every call logged, one workflow in production, and a human
reviewing its outputs for its first month."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from smallops.doctor._words import ago, count
from smallops.doctor.facts import RECENT, WINDOW, LogState, Subject
from smallops.doctor.practices import Finding, Item, PracticeId, Status, combine, joined
from smallops.review.policy import ReviewPolicy
from smallops.storage.practice_log import FIRST_MONTH

BACKENDS = {"sqlite": "SQLite", "postgresql": "Postgres"}
FULL_REVIEW = 'review="all" for its first month, then until_graduated()'


def every_call_logged(subject: Subject, log: LogState, now: datetime) -> Finding:
    """The log answers, holds nothing back (spool, set aside) and shows recent calls."""
    practice: PracticeId = "every_call_logged"
    if log.figures is None:
        source = subject.settings.source("database_url")
        fix = f"start the database or correct {source}; calls wait in the spool meanwhile"
        return Finding(practice, "fail", log.problem or "the log is unreachable", fix)
    figures = log.figures
    backend = BACKENDS.get(figures.backend, figures.backend)
    if log.set_aside:
        return Finding(
            practice,
            "warn",
            f"the {backend} log refused {count(log.set_aside, 'record')}, set aside",
            "`smallops status` shows which and why",
        )
    if log.waiting:
        return Finding(
            practice,
            "warn",
            f"the spool holds {count(log.waiting, 'run')} for the {backend} log",
            "they are written when the database answers; `smallops status` shows them",
        )
    if figures.last_call is None:
        return Finding(
            practice,
            "warn",
            f"the {backend} log answers; no calls recorded yet",
            "call a workflow (`smallops run NAME`): every call is logged",
        )
    recent = sum(figures.recent.values())
    last = ago(figures.last_call, now)
    if not recent:
        return Finding(
            practice,
            "warn",
            f"no calls in the last {RECENT.days} days; the last was {last}",
            "check that the application still calls its workflows through smallops",
        )
    return Finding(
        practice,
        "pass",
        f"{count(recent, 'call')} in {RECENT.days} days, the last {last} ({backend})",
    )


def one_workflow_in_production(subject: Subject, log: LogState, now: datetime) -> Finding:
    """At least one workflow is defined and called by the application."""
    practice: PracticeId = "one_workflow_in_production"
    broken = subject.broken[0] if subject.broken else None
    workflows = subject.production
    if not workflows:
        if broken is not None:
            return Finding(practice, "fail", broken.message, broken.hint or "fix the module")
        return Finding(
            practice,
            "fail",
            "no workflow in workflows/",
            "`smallops init` writes a working one to start from",
        )
    if broken is not None:  # what it defines is not running, whatever the log says
        return Finding(practice, "warn", broken.message, broken.hint or "fix the module")
    if log.figures is None:
        return Finding(
            practice,
            "warn",
            f"{count(len(workflows), 'workflow')} defined; the log is unreachable",
            "see Every call logged",
        )
    calls = {
        wf.name: log.figures.window[wf.name].calls
        for wf in workflows
        if wf.name in log.figures.window and log.figures.window[wf.name].calls
    }
    if not calls:
        name = workflows[0].name
        return Finding(
            practice,
            "warn",
            f"{joined([wf.name for wf in workflows])}: no production calls in {WINDOW.days} days",
            f"call {name} from the application (or `smallops run {name} --input FILE`)",
        )
    busiest = sorted(calls, key=lambda name: -calls[name])
    evidence = joined(
        [f"{name}: {count(calls[name], 'call')} in {WINDOW.days} days" for name in busiest]
    )
    return Finding(practice, "pass", evidence)


def human_review_first_month(subject: Subject, log: LogState, now: datetime) -> Finding:
    """Each workflow's outputs went before a human for its first month: by its policy while the
    month lasts (or before its first call), by the log's record of its runs after it."""
    workflows = subject.production
    if not workflows:
        return Finding(
            "human_review_first_month",
            "warn",
            "no workflow to review yet",
            "see One workflow in production",
        )
    return combine("human_review_first_month", [_first_month(wf, log, now) for wf in workflows])


def _first_month(wf: Any, log: LogState, now: datetime) -> Item:
    first = log.figures.first_call.get(wf.name) if log.figures else None
    if log.figures is not None and first is not None and first + FIRST_MONTH <= now:
        return _past_first_month(wf.name, log.figures.first_month.get(wf.name, Counter()), first)
    if log.figures is None:
        when = "the log is unreachable"
    else:
        when = "no calls yet" if first is None else f"first call {ago(first, now)}"
    policy: ReviewPolicy = wf.review
    status = _coverage(policy)
    shown = f"review={_quoted(policy)}"
    if status == "pass":
        return Item("pass", f"{wf.name}: {shown} ({when})")
    if status == "warn":
        return Item(
            "warn",
            f"{wf.name}: {shown} in its first month leaves outputs unseen ({when})",
            FULL_REVIEW,
        )
    return Item(
        "fail", f"{wf.name}: {shown} in its first month: nobody checks it ({when})", FULL_REVIEW
    )


def _past_first_month(name: str, policies: Counter[str], start: datetime) -> Item:
    """What the log says of the month after the first call (a workflow's policy may change)."""
    total = sum(policies.values())
    unseen = sum(n for policy, n in policies.items() if _recorded_coverage(policy) != "pass")
    since = f"from {start:%Y-%m-%d}"
    if not unseen:
        return Item("pass", f"{name}: its first month ({since}) was reviewed")
    return Item(
        "warn",
        f"{name}: {unseen:,} of {count(total, 'run')} in its first month skipped full review",
        "keep review on for the first month of the next workflow",
    )


def _coverage(policy: ReviewPolicy) -> Status:
    """pass: every output is reviewed for at least a month; warn: some are; fail: none."""
    if policy.kind in ("all", "always"):
        return "pass"
    if policy.kind == "until_graduated":
        return "pass" if policy.min_days >= FIRST_MONTH.days else "warn"
    return "warn" if policy.kind == "sample" else "fail"


def _recorded_coverage(policy: str) -> Status:
    """The same, of a policy as a run records it ("all", "sample(0.1)", ...)."""
    if policy in ("all", "always") or policy.startswith("until_graduated"):
        return "pass"
    return "warn" if policy.startswith("sample") else "fail"


def _quoted(policy: ReviewPolicy) -> str:
    return f'"{policy}"' if policy.kind in ("all", "none", "always") else str(policy)
