"""`smallops alerts`: check the rules and send what is due, list alerts, acknowledge one, and
test a channel."""

from __future__ import annotations

import getpass
import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import typer

from smallops.cli import _common
from smallops.cli._table import Column, print_fitted
from smallops.errors import ConfigError
from smallops.ids import short_id

if TYPE_CHECKING:
    from smallops.alerts.check import Round
    from smallops.project import Project
    from smallops.storage.db import Engine

app = typer.Typer(
    help="Alerts: check the rules, list, acknowledge, resolve, test a channel.",
    no_args_is_help=True,
    context_settings=_common.HELP_WIDTH,
)


@app.command("check")
def check_command(
    ctx: typer.Context,
    no_send: bool = typer.Option(
        False, "--no-send", help="Update the alerts but leave their messages in the outbox."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what changed as JSON."),
) -> None:
    """Check every rule once, fire or resolve alerts, and send the messages that are due.

    For cron or a CI schedule; `smallops serve` also does it every [alerts] interval. Several
    at once are safe: each alert fires once and each message is sent once. Exit 1 when a rule
    could not be checked or a message was refused for good (the alerting itself needs a look).
    """
    from smallops.alerts.check import check_once

    project = _common.project(ctx)
    # A module that does not load is a problem line, not the end of the round: every other
    # workflow's rules are checked and the outbox is sent; that module's open alerts stay open.
    workflows, broken = project.load_workflows()
    done = check_once(project.engine(), workflows, project.settings, os.environ, send=not no_send)
    done.changes.problems[:0] = [
        f"a workflow module does not load, so its rules were not checked: {exc}" for exc in broken
    ]
    if as_json:
        _common.print_json(done.as_dict())
    else:
        _print_round(done)
    if done.changes.problems or done.failed:
        raise typer.Exit(1)


def _print_round(done: Round) -> None:
    say = _common.out.print
    changes = done.changes
    for verb, keys in (
        ("fired", changes.fired),
        ("reminded", changes.repeated),
        ("escalated", changes.escalated),
        ("resolved", changes.resolved),
    ):
        for key in keys:
            say(f"{verb:9} {key}", markup=False)
    for key in changes.held:
        say(f"{'holding':9} {key} (over, but firing for less than min_firing)", markup=False)
    for attempt in done.attempts:
        say(
            f"{attempt.outcome:9} {attempt.event} to {attempt.channel}: {attempt.detail}",
            markup=False,
        )
    for problem in changes.problems:
        _common.err.print(f"warning: {problem}", markup=False)
    firing = len(changes.firing)
    say(f"{firing} alert{'s' if firing != 1 else ''} open", markup=False)


@app.command("list")
def list_command(
    ctx: typer.Context,
    open_only: bool = typer.Option(False, "--open", help="Only alerts not yet resolved."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=10_000),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Alerts, open ones first, newest first: state, severity, workflow, rule, what it found."""
    from smallops.storage.alert_log import notifications_of, recent_alerts

    engine = _common.project(ctx).engine()
    found = recent_alerts(engine, include_resolved=not open_only, limit=limit)
    if as_json:
        sent = notifications_of(engine, [a["id"] for a in found])
        for alert in found:
            notes = [
                {k: n[k] for k in ("channel", "event", "state", "attempts", "detail", "sent_at")}
                for n in sent.get(alert["id"], [])
            ]
            _common.print_json({**_shown(alert), "notifications": notes})
        return
    if not found:
        _common.out.print("no alerts", markup=False)
        return
    columns = [
        Column("id"),
        Column("state", cut_to=16),  # "acknowledged (who)": who, as far as it fits
        Column("severity", hide=3),
        Column("workflow", cut_to=16),
        Column("rule"),
        Column("fired", hide=2),
        Column("summary", cut_to=20, hide=1),
    ]
    now = datetime.now(timezone.utc)
    rows = [
        [
            short_id(a["id"]),
            a["state"] + (f" ({a['acknowledged_by']})" if a["state"] == "acknowledged" else ""),
            a["severity"],
            a["workflow"],
            a["rule"],
            _age(now, a["fired_at"]),
            a["summary"],
        ]
        for a in found
    ]
    print_fitted(columns, rows)


@app.command("ack")
def ack_command(
    ctx: typer.Context,
    alert_id: str = typer.Argument(..., help="The alert id as listed, or a unique start of it."),
    by: str | None = typer.Option(
        None, "--by", help="Who has it (default: $SMALLOPS_REVIEWER, else your user name)."
    ),
) -> None:
    """Acknowledge an open alert: no more reminders or escalation, and the channels it went to
    hear who has it (PagerDuty's incident is acknowledged too)."""
    from smallops.alerts.engine import acknowledge

    project = _common.project(ctx)
    engine = project.engine()
    name = by or os.environ.get("SMALLOPS_REVIEWER") or getpass.getuser()
    alert = acknowledge(engine, alert_id, name)
    _common.out.print(
        f"acknowledged {short_id(alert['id'])} ({alert['rule']}, {alert['workflow']}) as {name}",
        markup=False,
    )
    _send_now(project, engine)


@app.command("resolve")
def resolve_command(
    ctx: typer.Context,
    alert_id: str = typer.Argument(..., help="The alert id as listed, or a unique start of it."),
    by: str | None = typer.Option(
        None, "--by", help="Who resolves it (default: $SMALLOPS_REVIEWER, else your user name)."
    ),
) -> None:
    """Resolve an open alert by hand, for one its rule can no longer check (its workflow was
    deleted or renamed). The channels it went to hear it; if the condition still holds, the
    next check fires a new alert."""
    from smallops.alerts.engine import resolve_by_hand

    project = _common.project(ctx)
    engine = project.engine()
    name = by or os.environ.get("SMALLOPS_REVIEWER") or getpass.getuser()
    alert = resolve_by_hand(engine, alert_id, name)
    _common.out.print(
        f"resolved {short_id(alert['id'])} ({alert['rule']}, {alert['workflow']}) by hand",
        markup=False,
    )
    _send_now(project, engine)


@app.command("test")
def test_command(
    ctx: typer.Context,
    channel: str = typer.Argument(..., help="A channel named in [alerts.channels]."),
) -> None:
    """Send a test message to a channel and print exactly what the service answered. Exit 1
    unless it took the message."""
    from smallops.alerts.channels import build_channel
    from smallops.alerts.model import Notification, Sent
    from smallops.ids import uuid7

    settings = _common.project(ctx).settings
    config = settings.alerts.channels.get(channel)
    if config is None:
        known = ", ".join(settings.alerts.channels) or "none yet"
        raise ConfigError(
            f"no channel {channel!r} in [alerts.channels] of smallops.toml",
            hint=f"channels: {known}",
        )
    now = datetime.now(timezone.utc)
    sent = build_channel(config, os.environ).send(
        Notification(
            id=uuid7(),
            alert_id=uuid7(),
            event="test",
            rule="log_backlog",
            workflow="*",
            dedup_key=f"smallops:test:{channel}:{now:%Y%m%dT%H%M%S}",
            severity="info",
            summary=f"smallops test message to {channel}: nothing is wrong",
            figures={"test": True},
            link=settings.alerts.dashboard_url,
            fired_at=now,
            at=now,
        )
    )
    kind = type(sent).__name__.lower()
    _common.out.print(f"{channel} ({config.kind}): {kind}: {sent.detail}", markup=False)
    if not isinstance(sent, Sent):
        raise typer.Exit(1)


def _send_now(project: Project, engine: Engine) -> None:
    """Send what is due now (the word just queued), saying how each send went."""
    from smallops.alerts.outbox import Outbox

    for attempt in Outbox(engine, project.settings.alerts, os.environ).send_due():
        _common.out.print(
            f"{attempt.outcome:9} {attempt.event} to {attempt.channel}: {attempt.detail}",
            markup=False,
        )


def _shown(alert: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "state",
        "severity",
        "workflow",
        "rule",
        "period",
        "dedup_key",
        "summary",
        "figures",
        "link",
        "level",
        "repeats",
        "fired_at",
        "acknowledged_at",
        "acknowledged_by",
        "resolved_at",
    )
    return {key: alert[key] for key in keys}


def _age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return ""
    then = then if then.tzinfo else then.replace(tzinfo=timezone.utc)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
