"""`smallops status`: how each workflow's guards stand, right now."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from smallops.cli import _common

if TYPE_CHECKING:
    from smallops.project import Project
    from smallops.resilience.status import GuardStatus, Source
    from smallops.storage.quarantine import Quarantine
    from smallops.workflow import Workflow

#: Whose state a breaker or rate-limit line shows: the one shared through Redis, this
#: process's own (no Redis set), or this process's fallback while Redis does not answer (the
#: shared state is then unknown).
SOURCES: dict[Source, str] = {
    "shared": "shared (Redis)",
    "process": "this process only",
    "fallback": "this process's fallback: Redis is unreachable, the shared state is unknown",
}


def register(app: typer.Typer) -> None:
    app.command("status")(status_command)


def status_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per workflow."),
) -> None:
    """Each workflow's circuit breaker, rate-limit headroom, budget used and fallback queue.

    Breakers and limits kept in memory live in each process: set SMALLOPS_REDIS_URL to share
    them (and see them here); budgets and the queue are always read from the log database.
    A guard whose shared store does not answer is shown as degraded, with what it does instead.
    The calls a guard sent to the fallback in the last 24 hours are counted per reason (as
    `smallops logs --status` names it), with the last one's time: an outage leaves its mark.
    So do the spans the OpenTelemetry export could not deliver (processes of the last 24 hours).
    A key from a secret store shows its last fetch, and whether a cached key is serving while
    the store does not answer (as the processes calling the model last reported).
    """
    from smallops.review.queue import ReviewQueue
    from smallops.secrets.health import health_folder, read_health
    from smallops.storage.telemetry_state import read_drops, telemetry_folder
    from smallops.storage.writer import quarantine_for

    project = _common.project(ctx)
    queue = ReviewQueue(project.engine()).counts()
    set_aside = _set_aside(quarantine_for(project.settings.log))
    dropped = read_drops(telemetry_folder(project.settings.state_dir))
    keys = read_health(health_folder(project.settings.state_dir))
    rows = [
        {
            **_status(project, wf, queue.get(wf.name, 0)),
            "set_aside": set_aside.get(wf.name),
            "spans_dropped": _dropped(dropped.get(wf.name)),
            "key": _key(wf, keys),
        }
        for wf in project.workflows.values()
    ]
    if as_json:
        for row in rows:
            _common.print_json(row)
        return
    for row in rows:
        _print(row)


def _set_aside(quarantine: Quarantine) -> dict[str | None, dict[str, Any]]:
    """Per workflow: how many records the database refused, and the newest one's reason."""
    found: dict[str | None, dict[str, Any]] = {}
    for entry in quarantine.entries():
        if entry.kind != "run":
            continue
        row = found.setdefault(entry.workflow, {"records": 0, "folder": str(quarantine.folder)})
        row["records"] += 1
        row["newest"] = {
            "run_id": entry.run_id,
            "at": datetime.fromtimestamp(entry.at, timezone.utc),
            "reason": entry.reason,
        }
    return found


def _dropped(found: dict[str, Any] | None) -> dict[str, Any] | None:
    """The spans not delivered, with the last error's time as a datetime (None: none)."""
    if not found:
        return None
    at = found["last_at"]
    return {**found, "last_at": datetime.fromtimestamp(at, timezone.utc) if at else None}


def _key(wf: Workflow[Any], health: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """How the workflow's key from a secret store fares (None: an env key, or no report yet):
    times as datetimes, and `state` ok, stale (the store does not answer; the cached key
    serves until serving_until) or unavailable (calls go to the fallback)."""
    keys = getattr(wf.provider, "keys", None)
    if keys is None or keys.ref.scheme == "env":
        return None
    report = health.get(str(keys.ref))
    if report is None:
        return {"reference": str(keys.ref), "state": "not fetched yet"}
    now = datetime.now(timezone.utc).timestamp()
    until = report.get("serving_until")
    if report.get("unavailable") or (until is not None and now >= until):
        state = "unavailable"
    elif report.get("stale_since") is not None:
        state = "stale"
    else:
        state = "ok"
    found: dict[str, Any] = {"reference": str(keys.ref), "state": state}
    for name in ("last_ok_at", "stale_since", "serving_until", "problem_at"):
        at = report.get(name)
        found[name] = datetime.fromtimestamp(at, timezone.utc) if at else None
    found.update(
        version=report.get("version"),
        problem=report.get("problem"),
        processes=report.get("processes"),
    )
    return found


def _status(project: Project, wf: Workflow[Any], queued: int) -> dict[str, Any]:
    from smallops.resilience.status import guard_status

    guards = wf.plan().guards
    assert guards is not None
    found = guard_status(project.engine(), wf.name, guards)
    return _row(found, queued)


def _row(found: GuardStatus, queued: int) -> dict[str, Any]:
    """What --json prints for a workflow (set_aside is added after), in this key order."""
    return {
        "workflow": found.workflow,
        "breaker": found.breaker,
        "rate_limits": found.rate_limits,
        "rate_limits_shared": found.rate_limits_shared,
        "rate_limits_source": found.rate_limits_source,
        "budget": found.budget,
        "degraded": found.degraded,
        "refusals": found.refusals,
        "queued_for_review": queued,
        "recent_events": found.recent_events,
    }


def _print(row: dict[str, Any]) -> None:
    from smallops.resilience.status import REFUSALS_HOURS

    say = _common.out.print
    say(f"\n[bold]{escape(row['workflow'])}[/bold]")
    breaker = row["breaker"]
    if breaker is None:
        say("  breaker   off")
    else:
        say(
            f"  breaker   {breaker['state']} ({SOURCES[breaker['source']]}); "
            f"{breaker['failures']} of {breaker['calls']} recent calls failed"
        )
    fallback = " in this process's fallback (the shared count is unknown)"
    for limit in row["rate_limits"]:
        where = fallback if row["rate_limits_source"] == "fallback" else ""
        say(f"  limit     {limit['limit']}: {limit['remaining']} left{where}")
    for period in row["budget"]:
        say(
            f"  budget    {period['period']}: ${period['spent_usd']:.4f} of "
            f"${period['cap_usd']:g} ({period['used']:.0%})"
        )
    for outage in row["degraded"]:
        guard = outage["guard"].replace("_", " ")
        say(f"  degraded  {guard}: {escape(outage['reason'])}")
    for refused in row["refusals"]:
        say(
            f"  refused   {refused['calls']} calls {refused['error_type']} in the last "
            f"{REFUSALS_HOURS} h, "
            f"the last at {_common.when(refused['last_at'])}: sent to the fallback"
        )
    _print_key(row["key"])
    say(f"  queue     {row['queued_for_review']} waiting for review")
    if row["set_aside"]:
        aside, newest = row["set_aside"], row["set_aside"]["newest"]
        say(
            f"  [red]set aside[/red] {aside['records']} records the database refused, kept in "
            f"{escape(aside['folder'])}; newest: run {newest['run_id']} "
            f"({escape(newest['reason'])}) — `smallops show ID`"
        )
    if row["spans_dropped"]:
        lost = row["spans_dropped"]
        say(
            f"  [red]telemetry[/red] {lost['spans']} spans the OpenTelemetry collector did not get "
            f"(processes of the last 24 h); last at {_common.when(lost['last_at'])}: "
            f"{escape(lost['last_error'] or 'unknown')} — `smallops export otel --since 1d` "
            "sends them again"
        )
    for event in row["recent_events"]:
        say(
            f"  event     {_common.when(event['at'])} {event['guard']} {event['after']}: "
            f"{escape(event['reason'])}"
        )


def _print_key(key: dict[str, Any] | None) -> None:
    if key is None:
        return
    say, ref = _common.out.print, escape(key["reference"])
    if key["state"] == "not fetched yet":
        say(f"  key       {ref}: not fetched yet")
        return
    last = (
        f"last fetched {_common.when(key['last_ok_at'])}" if key["last_ok_at"] else "never fetched"
    )
    problem = escape(key["problem"] or "")
    if key["state"] == "ok":
        say(f"  key       {ref}: {last}")
    elif key["state"] == "stale":
        say(
            f"  [yellow]key[/yellow]       {ref}: the store has not answered since "
            f"{_common.when(key['stale_since'])} ({problem}); the cached key serves until "
            f"{_common.when(key['serving_until'])}"
        )
    else:
        say(
            f"  [red]key[/red]       {ref}: unavailable ({problem}); {last}: calls go to "
            "the fallback (secret_unavailable)"
        )
