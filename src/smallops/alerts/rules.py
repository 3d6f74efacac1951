"""The alert rules: each one a small check over the log of one workflow (or of the project, "*"),
returning the findings that fire now.

`evaluate` runs every rule for every workflow the project defines, with the thresholds
smallops.toml gives it (alert_config.AlertSettings.rule). A rule that is disabled is checked as
not firing, so an alert of it that is open resolves. A rule that cannot be checked (the database
or Redis does not answer, a workflow that cannot be planned) is a problem line and is left out of
`checked`, so its open alerts stay as they are: nobody is told a problem is over because nobody
could look. One rule failing never stops the others.

What the rules read is cheap at a million runs: cost and served models from the hourly rollups,
the spikes from one short window of runs through the (workflow, started_at) index, the backlog
from the queue's index. A finding carries figures and names only, never prompt or output text.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from smallops.alerts.cost_surprise import cost_surprise, iso_week
from smallops.alerts.model import Figure, Finding
from smallops.alerts.wording import link, money
from smallops.dashboards.figures import FALLBACK_STATUSES, MODEL_REFUSAL
from smallops.dashboards.ranges import HOUR, floor_hour
from smallops.errors import SmallopsError
from smallops.evals.shifts import distribution_shifts
from smallops.kinds import RULES, RuleName, Severity
from smallops.redact import Redactor
from smallops.resilience.breaker import CLOSED
from smallops.resilience.shared import describe
from smallops.stats import wilson
from smallops.storage import alert_figures, dashboard_figures, guard_log
from smallops.storage.health import DatabaseError, first_line
from smallops.storage.quarantine import Quarantine, quarantine_folder
from smallops.storage.spool import spool_folder

if TYPE_CHECKING:
    from smallops.alert_config import AlertSettings
    from smallops.resilience.guards import Guards
    from smallops.storage.db import Engine
    from smallops.workflow import Workflow

log = logging.getLogger("smallops")
T = TypeVar("T")

#: The workflow name of a finding about the project as a whole.
PROJECT = "*"
#: Rules about the project, not one workflow.
PROJECT_RULES: frozenset[RuleName] = frozenset({"log_backlog"})
#: The longest served model name a finding's period (its dedup key) holds.
PERIOD_CHARS = 100
#: What a rule may fail with and still be reported as a problem in one line.
EXPECTED_FAILURES = (SmallopsError, DatabaseError, OSError)


@dataclass(frozen=True)
class Context:
    """What the rules look at: the log, the project's workflows, the thresholds, the spool
    folder (Settings.spool_dir, one folder per database under it) and the time (UTC)."""

    engine: Engine
    workflows: Mapping[str, Workflow[Any]]
    settings: AlertSettings
    spool_dir: Path | None
    now: datetime


@dataclass(frozen=True)
class Evaluation:
    """`findings`: the firing ones only. `checked`: the (rule, workflow) pairs evaluated, so an
    open alert of such a pair with no firing finding of its dedup key is over. `problems`: one
    line per rule that could not be checked; its pairs are not in `checked`."""

    findings: list[Finding]
    checked: set[tuple[RuleName, str]]
    problems: list[str]


class Reads:
    """The context, and what several checks read, made once per evaluation (a failure too:
    a query that failed for one workflow is not run again for the next)."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self._done: dict[Hashable, tuple[bool, Any]] = {}

    @property
    def engine(self) -> Engine:
        return self.context.engine

    @property
    def now(self) -> datetime:
        return self.context.now.astimezone(timezone.utc)

    def once(self, key: Hashable, read: Callable[[], T]) -> T:
        if key not in self._done:
            try:
                self._done[key] = (True, read())
            except Exception as exc:  # raised again below, for every check that needs it
                self._done[key] = (False, exc)
        ok, value = self._done[key]
        if not ok:
            raise value
        result: T = value
        return result

    def guards(self, workflow: str) -> Guards | None:
        """The workflow's guards, from its call plan (which makes no call)."""
        wf = self.context.workflows[workflow]
        return self.once(("guards", workflow), lambda: wf.plan().guards)


Check = Callable[[Reads, str, Mapping[str, Any]], list[Finding]]


def evaluate(context: Context) -> Evaluation:
    """Every rule for every workflow (and the project rules for "*"), each on its own."""
    reads = Reads(context)
    findings: list[Finding] = []
    checked: set[tuple[RuleName, str]] = set()
    failed: dict[tuple[RuleName, str], list[str]] = {}
    for rule in RULES:
        targets = [PROJECT] if rule in PROJECT_RULES else sorted(context.workflows)
        for workflow in targets:
            try:
                thresholds = context.settings.rule(rule, workflow)
                found = CHECKS[rule](reads, workflow, thresholds) if thresholds["enabled"] else []
            except EXPECTED_FAILURES as exc:
                failed.setdefault((rule, _reason(exc)), []).append(workflow)
                continue
            except Exception as exc:  # a fault in one rule must not silence the others
                log.exception("smallops: alert rule %s failed for %s", rule, workflow)
                failed.setdefault((rule, f"unexpected {describe(exc)}"), []).append(workflow)
                continue
            checked.add((rule, workflow))
            findings.extend(finding for finding in found if finding.firing)
    problems = [
        f"{rule} could not be checked for {_targets(workflows)}: {reason}"
        for (rule, reason), workflows in failed.items()
    ]
    return Evaluation(findings, checked, problems)


def _reason(exc: BaseException) -> str:
    """One line, secrets masked (a URL with a password in an error stays out of the alert)."""
    if isinstance(exc, DatabaseError):
        return f"the log database: {first_line(exc)}"
    if isinstance(exc, SmallopsError):
        line = (str(exc).splitlines() or [type(exc).__name__])[0]
        return Redactor.from_environment()(line) or line
    return describe(exc)


def _targets(workflows: list[str]) -> str:
    return ", ".join("the project" if name == PROJECT else name for name in workflows)


# --- budget --------------------------------------------------------------------------------


def budget(reads: Reads, workflow: str, t: Mapping[str, Any]) -> list[Finding]:
    """Each budget period whose spend reached `near` of its cap (the rule's severity), or the
    cap itself (critical)."""
    if reads.context.workflows[workflow].budget is None:
        return []
    guards = reads.guards(workflow)
    ledger = guards.budget if guards is not None else None
    if ledger is None:
        return []
    found = []
    with reads.engine.connect() as connection:
        for period, start, cap in ledger.periods(reads.now):
            spent = guard_log.spent_in_period(connection, workflow, period, start)
            used = spent / cap
            if used < float(t["near"]):
                continue
            over = used >= 1.0
            severity: Severity = "critical" if over else t["severity"]
            kind = "daily" if period.startswith("day:") else "monthly"
            found.append(
                Finding(
                    rule="budget",
                    workflow=workflow,
                    firing=True,
                    severity=severity,
                    period=period,
                    summary=(
                        f"{workflow}: {kind} budget {used:.0%} used ({money(spent)} of "
                        f"{money(cap)}, {period})" + ("; calls go to the fallback" if over else "")
                    ),
                    figures={
                        "spent_usd": round(spent, 6),
                        "cap_usd": cap,
                        "used": round(used, 4),
                    },
                    link=link(workflow),
                )
            )
    return found


# --- breaker_open --------------------------------------------------------------------------


def breaker_open(reads: Reads, workflow: str, t: Mapping[str, Any]) -> list[Finding]:
    """The circuit breaker is not closed (open, or probing half-open). Shared through Redis:
    Redis's state, and a problem when Redis does not answer. Kept in each process's memory:
    the latest transition the workflow's processes recorded as a guard event."""
    if reads.context.workflows[workflow].breaker is None:
        return []
    guards = reads.guards(workflow)
    if guards is None or guards.breaker is None or guards.breaker_config is None:
        return []
    store, key = guards.breaker, guards.breaker_key
    if store.needs_io:
        state = store.state(key, guards.breaker_config, reads.now.timestamp())
        down = store.degraded()
        if down is not None:
            outage = str(down["reason"]).split("; ")[0]  # not what this process does meanwhile
            raise SmallopsError(
                f"the shared breaker state cannot be read: {outage}",
                hint="check that Redis answers at the URL smallops.toml gives (redis_url)",
            )
        after, source = str(state["state"]), "shared"
        opened = state.get("opened_at")
        since = datetime.fromtimestamp(opened, timezone.utc) if opened else None
        reason = None
    else:
        event = alert_figures.latest_guard_event(reads.engine, workflow, "breaker", key, reads.now)
        if event is None:
            return []
        after, source, since, reason = str(event["after"]), "events", event["at"], event["reason"]
    if after == CLOSED:
        return []
    figures: dict[str, Figure] = {
        "state": after,
        "since": since.isoformat() if since else None,
        "source": source,
    }
    if reason:
        figures["reason"] = str(reason)[:200]
    at = f" since {since:%Y-%m-%d %H:%M} UTC" if since else ""
    return [
        Finding(
            rule="breaker_open",
            workflow=workflow,
            firing=True,
            severity=t["severity"],
            summary=(
                f"{workflow}: circuit breaker {after.replace('_', '-')}{at}"
                + (f" ({reason})" if reason else "")
                + "; calls go to the fallback"
            ),
            figures=figures,
            link=link(workflow),
        )
    ]


# --- error_spike, refusal_spike, fallback_spike --------------------------------------------

_SPIKES: dict[RuleName, tuple[str, str]] = {  # rule: (RecentCalls field, what is counted)
    "error_spike": ("errors", "errors"),
    "refusal_spike": ("refusals", "model refusals"),
    "fallback_spike": ("fallbacks", "calls handled by the fallback"),
}


def spike_check(rule: RuleName) -> Check:
    """A spike rule: fires when the window holds at least `min_calls` calls on the pinned route
    and the Wilson lower bound of the rate (at `confidence`) is above `rate`, so a handful of
    failures among a handful of calls never pages anyone."""
    field, what = _SPIKES[rule]

    def check(reads: Reads, workflow: str, t: Mapping[str, Any]) -> list[Finding]:
        window = float(t["window"])
        since = reads.now - timedelta(seconds=window)
        calls = reads.once(
            ("recent_calls", workflow, since),
            lambda: alert_figures.recent_calls(
                reads.engine,
                workflow,
                since,
                reads.now,
                refusal=MODEL_REFUSAL,
                fallback_statuses=FALLBACK_STATUSES,
            ),
        )
        count: int = getattr(calls, field)
        if calls.calls < int(t["min_calls"]) or not count:
            return []
        low, _ = wilson(count, calls.calls, float(t["confidence"]))
        threshold = float(t["rate"])
        if not low > threshold:
            return []
        rate = count / calls.calls
        return [
            Finding(
                rule=rule,
                workflow=workflow,
                firing=True,
                severity=t["severity"],
                summary=(
                    f"{workflow}: {count} {what} in {calls.calls} calls over the last "
                    f"{_duration(window)} ({rate:.1%}; at least {low:.1%} at "
                    f"{float(t['confidence']):.0%} confidence, above {threshold:.1%})"
                ),
                figures={
                    "calls": calls.calls,
                    "count": count,
                    "rate": round(rate, 4),
                    "lower_bound": round(low, 4),
                    "threshold": threshold,
                    "window_s": window,
                },
                link=link(workflow),
            )
        ]

    return check


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _age(seconds: float) -> str:
    """A wait as a person reads it: "3.5 h", "42 min", "2.1 d"."""
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{max(seconds, 0) / 60:.0f} min"


# --- review_backlog ------------------------------------------------------------------------


def review_backlog(reads: Reads, workflow: str, t: Mapping[str, Any]) -> list[Finding]:
    """The oldest pending review item has waited longer than the service level (`sla`)."""
    backlog = reads.once("backlog", lambda: dashboard_figures.backlog(reads.engine))
    found = backlog.get(workflow)
    if found is None or found.oldest is None:
        return []
    age = (reads.now - found.oldest).total_seconds()
    sla = float(t["sla"])
    if age <= sla:
        return []
    return [
        Finding(
            rule="review_backlog",
            workflow=workflow,
            firing=True,
            severity=t["severity"],
            summary=(
                f"{workflow}: the oldest of {found.pending} pending review items has waited "
                f"{_age(age)}, past the {_duration(sla)} service level"
            ),
            figures={"pending": found.pending, "oldest_age_s": round(age), "sla_s": sla},
            link="/?workflow=" + quote(workflow, safe=""),
        )
    ]


# --- model_mismatch ------------------------------------------------------------------------


def model_mismatch(reads: Reads, workflow: str, t: Mapping[str, Any]) -> list[Finding]:
    """Production calls on the pinned route answered by another model than the one requested
    (a silent upgrade), over the last `window` (whole hours): one finding per served model."""
    window = float(t["window"])
    since = floor_hour(reads.now - timedelta(seconds=window))
    until = floor_hour(reads.now) + HOUR
    calls: Counter[str] = Counter()
    requested: dict[str, Counter[str]] = {}
    for row in alert_figures.model_mismatches(reads.engine, workflow, since, until):
        calls[row.served] += row.calls
        requested.setdefault(row.served, Counter())[row.requested] += row.calls
    found = []
    for served, n in sorted(calls.items()):
        pinned = requested[served].most_common(1)[0][0]
        found.append(
            Finding(
                rule="model_mismatch",
                workflow=workflow,
                firing=True,
                severity=t["severity"],
                period=served[:PERIOD_CHARS],
                summary=(
                    f"{workflow}: {n} calls pinned to {pinned} were answered by {served} in "
                    f"the last {_duration(window)}"
                ),
                figures={"calls": n, "pinned": pinned, "served": served, "window_s": window},
                link=link(workflow),
            )
        )
    return found


# --- output_shift --------------------------------------------------------------------------


def output_shift(reads: Reads, workflow: str, t: Mapping[str, Any]) -> list[Finding]:
    """An enum field of the production outputs whose distribution moved week over week (the
    drift report's chi-square test) below `p_value`."""
    threshold = float(t["p_value"])
    shifts = distribution_shifts(reads.engine, workflow, reads.now)
    shifted = sorted(
        (s for s in shifts if s["p_value"] < threshold), key=lambda s: (s["p_value"], s["field"])
    )
    if not shifted:
        return []
    names = [str(s["field"]) for s in shifted]
    figures: dict[str, Figure] = {
        "fields": ", ".join(names),
        "min_p_value": float(shifted[0]["p_value"]),
        "threshold": threshold,
    }
    figures.update({f"p_value.{s['field']}": float(s["p_value"]) for s in shifted})
    week = iso_week(reads.now)
    return [
        Finding(
            rule="output_shift",
            workflow=workflow,
            firing=True,
            severity=t["severity"],
            period=week,
            summary=(
                f"{workflow}: the production outputs' {', '.join(names)} shifted week over week "
                f"(p = {float(shifted[0]['p_value']):.2g}, below {threshold:g})"
            ),
            figures=figures,
            link=link(workflow),
        )
    ]


# --- eval_regression -----------------------------------------------------------------------


def eval_regression(reads: Reads, workflow: str, t: Mapping[str, Any]) -> list[Finding]:
    """The latest eval run the gate judged (`smallops eval --ci`) was a regression; a later
    run the gate did not call one ends it."""
    run = alert_figures.latest_gated_eval(reads.engine, workflow, reads.now)
    if run is None or run["verdict"] != "regression":
        return []
    version = str(run["prompt_version"])
    return [
        Finding(
            rule="eval_regression",
            workflow=workflow,
            firing=True,
            severity=t["severity"],
            period=version,
            summary=(
                f"{workflow}: `smallops eval --ci` found a regression in prompt version "
                f"{version} on {run['model']} ({run['passed']} of {run['cases']} cases passed)"
            ),
            figures={
                "prompt_version": version,
                "model": str(run["model"]),
                "passed": int(run["passed"]),
                "cases": int(run["cases"]),
                "eval_run": str(run["id"]),
                "started_at": run["started_at"].isoformat(),
            },
            link="/evals/" + quote(str(run["id"]), safe=""),
        )
    ]


# --- log_backlog ---------------------------------------------------------------------------


def log_backlog(reads: Reads, workflow: str, t: Mapping[str, Any]) -> list[Finding]:
    """Records that have not reached the database: spool files waiting to be replayed, or
    records the database refused, set aside in the quarantine. Nothing is lost, but nothing
    there shows in the log until someone looks."""
    spool_dir = reads.context.spool_dir
    if spool_dir is None:
        return []
    url = reads.engine.url.render_as_string(hide_password=False)  # as the writer names it
    folder = spool_folder(spool_dir, url)
    files, size = 0, 0
    if folder.is_dir():
        for path in folder.glob("*.jsonl"):
            try:
                bytes_ = path.stat().st_size
            except FileNotFoundError:  # replayed meanwhile
                continue
            if bytes_:
                files, size = files + 1, size + bytes_
    quarantined = sum(1 for _ in Quarantine(quarantine_folder(folder)).entries())
    if not files and not quarantined:
        return []
    parts = []
    if files:
        parts.append(f"{files} spool files ({_size(size)}) wait for the database")
    if quarantined:
        parts.append(f"{quarantined} records were refused and set aside in the quarantine")
    return [
        Finding(
            rule="log_backlog",
            workflow=workflow,
            firing=True,
            severity=t["severity"],
            summary="; ".join(parts) + " (smallops status)",
            figures={"spool_files": files, "spool_bytes": size, "quarantined": quarantined},
            link="/dashboard",
        )
    ]


def _size(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


CHECKS: dict[RuleName, Check] = {
    "cost_surprise": cost_surprise,
    "budget": budget,
    "breaker_open": breaker_open,
    "error_spike": spike_check("error_spike"),
    "refusal_spike": spike_check("refusal_spike"),
    "fallback_spike": spike_check("fallback_spike"),
    "review_backlog": review_backlog,
    "model_mismatch": model_mismatch,
    "output_shift": output_shift,
    "eval_regression": eval_regression,
    "log_backlog": log_backlog,
}
