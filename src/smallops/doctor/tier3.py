"""Tier 3, 25 to 50 people: evals in CI, rate limits and breakers, pinned models with a recent
drift check, alerts that reach an owner, and a fallback that keeps the work going."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from smallops.doctor._words import ago, count
from smallops.doctor.ci import scan_ci
from smallops.doctor.facts import WINDOW, LogState, Subject
from smallops.doctor.practices import Finding, Item, PracticeId, combine, no_workflow
from smallops.errors import SmallopsError
from smallops.evals.baseline import baseline_path, read_baseline

ADD_GATE = "run `smallops eval --ci` in CI (`smallops init` writes a GitHub Actions file)"


def evals_in_ci(subject: Subject, log: LogState, now: datetime) -> Finding:
    """A CI file runs the eval gate, and each workflow has a baseline of its current prompt
    for the gate to compare with."""
    practice: PracticeId = "evals_in_ci"
    scan = scan_ci(subject.root)
    if scan.gate is None:
        if scan.misplaced is not None:
            return Finding(
                practice,
                "fail",
                f"{scan.misplaced.shown(subject.root)} runs the gate, but CI reads its files at "
                "the repository's root only",
                "move it to the repository's root, its steps run in the project's folder "
                "(working-directory, or smallops -p)",
            )
        if scan.ungated is not None:
            return Finding(
                practice,
                "warn",
                f"{scan.ungated.shown(subject.root)} runs `smallops eval` without --ci",
                "add --ci: the job then fails on a regression",
            )
        found = f"{len(scan.files)} CI files, none runs" if scan.files else "no CI file runs"
        return Finding(practice, "fail", f"{found} `smallops eval --ci`", ADD_GATE)
    gate = Item("pass", f"`smallops eval --ci` in {scan.gate.shown(subject.root)}")
    missing = [item for wf in subject.production if (item := _baseline(wf)).status != "pass"]
    return combine(practice, [gate, *missing])


def _baseline(wf: Any) -> Item:
    path = baseline_path(wf.evals_path)
    fix = f"smallops eval {wf.name} --update-baseline, then commit {path.name}"
    try:
        baseline = read_baseline(path)
    except SmallopsError as exc:
        return Item("warn", exc.message, fix)
    if baseline is None:
        return Item("warn", f"CI runs the gate; {wf.name} has no baseline to compare with", fix)
    if baseline.prompt_version != wf.version.id:
        return Item("warn", f"CI runs the gate; {wf.name}'s baseline is of an older prompt", fix)
    return Item("pass", "")


def rate_limits_and_breakers(subject: Subject, log: LogState, now: datetime) -> Finding:
    """Each workflow has a rate limit (the provider's quota, not a surprise 429 storm) and a
    circuit breaker (a failing provider is left alone, the work goes to the fallback)."""
    workflows = subject.production
    if not workflows:
        return no_workflow("rate_limits_and_breakers")
    return combine("rate_limits_and_breakers", [_guards(wf) for wf in workflows])


def _guards(wf: Any) -> Item:
    limits = [str(limit) for limit in (*wf.rate_limit, *wf.token_limit)]
    breaker = wf.breaker is not None
    limit_fix = f'rate_limit="60/minute" on {wf.name} (your provider quota)'
    if limits and breaker:
        return Item("pass", f"{wf.name}: {limits[0]}, breaker on")
    if breaker:
        return Item("warn", f"{wf.name}: breaker on, no rate limit", limit_fix)
    breaker_fix = f"drop breaker=None from {wf.name}: the default breaker is on"
    if limits:
        return Item("warn", f"{wf.name}: {limits[0]}, breaker off", breaker_fix)
    return Item("fail", f"{wf.name}: no rate limit, breaker off", f"{limit_fix}; {breaker_fix}")


def pinned_models_drift_checked(subject: Subject, log: LogState, now: datetime) -> Finding:
    """Every model is a dated snapshot, the provider answers with the model asked for, and each
    workflow was compared with another model in the last 30 days (`smallops drift`)."""
    if not subject.workflows:
        return no_workflow("pinned_models_drift_checked")
    graders = subject.graders
    items = [
        _pinned(wf, log, now, grader=name in graders)
        for name, wf in sorted(subject.workflows.items())
    ]
    return combine("pinned_models_drift_checked", items)


def _pinned(wf: Any, log: LogState, now: datetime, *, grader: bool) -> Item:
    name = wf.name
    if wf.allow_unpinned:
        return Item(
            "fail",
            f"{name}: {wf.model} is not pinned (allow_unpinned=True)",
            "pin a dated snapshot in model= and drop allow_unpinned",
        )
    if grader:
        return Item("pass", f"{name}: pinned")
    drift_fix = f"smallops drift {name} --candidate PROVIDER:MODEL, monthly"
    if log.figures is None:
        return Item("warn", f"{name}: pinned; the log is unreachable", "see Every call logged")
    calls = log.figures.window.get(name)
    if calls is not None and calls.model_mismatches:
        return Item(
            "warn",
            f"{name}: another model answered {count(calls.model_mismatches, 'time')} in 30 days",
            f"`smallops report` says which; then {drift_fix}",
        )
    checks = {
        model: when
        for model, when in log.figures.drift_checks.get(name, {}).items()
        if model != str(wf.model)
    }
    if not checks:
        return Item("warn", f"{name}: pinned; no drift check yet", drift_fix)
    latest = max(checks.values())
    if now - latest > WINDOW:
        return Item("warn", f"{name}: pinned; last drift check {ago(latest, now)}", drift_fix)
    return Item("pass", f"{name}: pinned, drift checked {ago(latest, now)}")


def alerts_to_an_owner(subject: Subject, log: LogState, now: datetime) -> Finding:
    """Each workflow has an owner, and an alert channel in [alerts] reaches them."""
    workflows = subject.production
    if not workflows:
        return no_workflow("alerts_to_an_owner")
    return combine("alerts_to_an_owner", [_owner(wf, subject) for wf in workflows])


def _owner(wf: Any, subject: Subject) -> Item:
    if not wf.owner:
        return Item(
            "fail",
            f"{wf.name} has no owner",
            f'owner="ops@acme.example" on {wf.name}, and a channel for them in [alerts]',
        )
    route = subject.settings.alerts.route(wf.name, wf.owner)
    if not route.first:
        return Item(
            "fail",
            f"{wf.name}: no alert channel reaches {wf.owner}",
            f'set [alerts.owners] "{wf.owner}" = ["a channel"] in smallops.toml',
        )
    return Item("pass", f"{wf.name} → {wf.owner} via {', '.join(route.first)}")


def documented_fallback(subject: Subject, log: LogState, now: datetime) -> Finding:
    """Each workflow says where its work goes when the model fails (a human, another model, a
    default answer), rather than leaving the outage to the caller."""
    workflows = subject.production
    if not workflows:
        return no_workflow("documented_fallback")
    return combine("documented_fallback", [_fallback(wf) for wf in workflows])


def _fallback(wf: Any) -> Item:
    fallback = wf.fallback
    if fallback.kind == "review":
        return Item("pass", f"{wf.name} → the human review queue")
    if fallback.kind == "default":
        return Item("pass", f"{wf.name} → a default answer")
    if fallback.kind == "secondary":
        return Item("pass", f"{wf.name} → {fallback.value[0]}, then {_then(fallback.value[1])}")
    return Item(
        "warn",
        f'{wf.name}: fallback="raise" leaves the outage to the caller',
        'fallback="review" (a human) or secondary("PROVIDER:MODEL")',
    )


def _then(then: Any) -> str:
    kind = then if isinstance(then, str) else then.kind
    return {"review": "a human", "raise": "an error", "default": "a default answer"}.get(kind, kind)
