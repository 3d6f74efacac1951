"""From what the rules find to alert state and outbox rows: each alert fires once, is repeated
only after `repeat_after` (or when its severity rises), escalates when nobody acknowledges it in
time, and resolves once, after it has fired for at least `min_firing` (so it does not flap).
With [alerts] `hold`, a new alert is pending (nobody is told) until its condition has lasted
that long; one that ends while pending resolves without a word.

Each change is one write transaction that locks the alert it changes, and every message it
calls for is an outbox row written in that same transaction: a crash leaves either both or
neither, and two processes checking at once (cron and `smallops serve`) never both fire, both
resolve, or both escalate the same alert. The outbox (alerts/outbox.py) sends the messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from smallops.alert_config import AlertSettings, Route
from smallops.alerts.model import Finding
from smallops.errors import InputError, NotFoundError
from smallops.ids import uuid7
from smallops.kinds import NotifyEvent, RuleName, Severity
from smallops.storage import alert_log
from smallops.storage.db import write_transaction
from smallops.storage.storable import text

if TYPE_CHECKING:
    from smallops.alerts.rules import Evaluation
    from smallops.storage.db import Connection, Engine

PROJECT = "*"  # the workflow of a rule about the whole project (the spool, the quarantine)
ACKNOWLEDGED_BY_CHARS = 200  # alerts.acknowledged_by holds this many
RANK: dict[Severity, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}


@dataclass
class Changes:
    """What one check did, by dedup key; `problems` are rules that could not be checked."""

    fired: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # seen, held back until `hold` has passed
    repeated: list[str] = field(default_factory=list)
    escalated: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # over, but not yet min_firing old
    firing: list[str] = field(default_factory=list)  # open after the check
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "fired": self.fired,
            "pending": self.pending,
            "repeated": self.repeated,
            "escalated": self.escalated,
            "resolved": self.resolved,
            "held": self.held,
            "firing": self.firing,
            "problems": self.problems,
        }


@dataclass(frozen=True)
class Routes:
    """Who hears about each workflow's alerts: from [alerts] and each workflow's owner."""

    config: AlertSettings
    owners: Mapping[str, str | None]

    def of(self, workflow: str, rule: RuleName) -> Route:
        if workflow == PROJECT and workflow not in self.config.workflows:
            own = self.config.route(workflow, None, rule)
            if own.first:
                return own
            first: list[str] = []
            for name, owner in self.owners.items():
                first += [c for c in self.config.route(name, owner).first if c not in first]
            return Route(tuple(first), self.config.escalate_to)
        return self.config.route(workflow, self.owners.get(workflow), rule)


def apply(
    engine: Engine,
    evaluation: Evaluation,
    config: AlertSettings,
    owners: Mapping[str, str | None],
    now: datetime | None = None,
) -> Changes:
    """Bring the alerts in the database in line with one evaluation of the rules."""
    now = now or datetime.now(timezone.utc)
    routes = Routes(config, owners)
    changes = Changes(problems=list(evaluation.problems))
    firing_keys = {finding.dedup_key for finding in evaluation.findings}
    for finding in evaluation.findings:
        _fire(engine, finding, config, routes, now, changes)
    with engine.connect() as connection:
        opened = alert_log.open_alerts(connection)
    for alert in opened:
        key = alert["dedup_key"]
        if key not in firing_keys and (alert["rule"], alert["workflow"]) in evaluation.checked:
            _resolve(engine, key, config, now, changes)
        elif alert["state"] == "firing" and alert["level"] == 0:
            _escalate(engine, key, config, routes, now, changes)
    with engine.connect() as connection:
        changes.firing = [a["dedup_key"] for a in alert_log.open_alerts(connection)]
    return changes


def _fire(
    engine: Engine,
    finding: Finding,
    config: AlertSettings,
    routes: Routes,
    now: datetime,
    changes: Changes,
) -> None:
    key = finding.dedup_key
    figures = {
        "severity": finding.severity,
        "summary": finding.summary,
        "figures": dict(finding.figures),
        "link": _link(config, finding.link),
    }
    for _ in range(2):  # a second try when another process opened the alert meanwhile
        try:
            with write_transaction(engine) as connection:
                alert = alert_log.open_alert(connection, key)
                if alert is None:
                    held = config.hold > 0
                    _open(
                        connection,
                        finding,
                        figures,
                        routes.of(finding.workflow, finding.rule),
                        now,
                        held,
                    )
                    (changes.pending if held else changes.fired).append(key)
                    return
                if alert["state"] == "pending":
                    _pending(connection, alert, finding, figures, config, routes, now, changes)
                    return
                _still_firing(connection, alert, finding, figures, config, now, changes)
                return
        except alert_log.OpenedElsewhere:
            continue


def _open(
    connection: Connection,
    finding: Finding,
    figures: dict[str, Any],
    route: Route,
    now: datetime,
    held: bool = False,
) -> None:
    alert_id = uuid7()
    alert_log.add_alert(
        connection,
        {
            "id": alert_id,
            "rule": finding.rule,
            "workflow": finding.workflow,
            "period": finding.period,
            "dedup_key": finding.dedup_key,
            "open_key": finding.dedup_key,
            "state": "pending" if held else "firing",
            "severity": finding.severity,
            "summary": finding.summary,
            "figures": figures["figures"],
            "link": figures["link"],
            "level": 0,
            "repeats": 0,
            "thread": {},
            "fired_at": now,
            "last_notified_at": now,
            "updated_at": now,
        },
    )
    if not held:
        _notify(connection, alert_id, route.first, "firing", figures, route.recipients, now)


def _pending(
    connection: Connection,
    alert: dict[str, Any],
    finding: Finding,
    figures: dict[str, Any],
    config: AlertSettings,
    routes: Routes,
    now: datetime,
    changes: Changes,
) -> None:
    """Still seen: it fires once it has lasted `hold` since it was first seen."""
    values: dict[str, Any] = {
        "severity": finding.severity,
        "summary": finding.summary,
        "figures": figures["figures"],
        "link": figures["link"],
        "updated_at": now,
    }
    if now - _utc(alert["fired_at"]) >= timedelta(seconds=config.hold):
        route = routes.of(alert["workflow"], alert["rule"])
        _notify(connection, alert["id"], route.first, "firing", figures, route.recipients, now)
        values.update(state="firing", fired_at=now, last_notified_at=now)
        changes.fired.append(alert["dedup_key"])
    alert_log.change_alert(connection, alert["id"], **values)


def _still_firing(
    connection: Connection,
    alert: dict[str, Any],
    finding: Finding,
    figures: dict[str, Any],
    config: AlertSettings,
    now: datetime,
    changes: Changes,
) -> None:
    """Keep the figures current; remind after repeat_after, or at once when it got worse."""
    worse = RANK[finding.severity] > RANK.get(alert["severity"], 0)
    due = now - _utc(alert["last_notified_at"]) >= timedelta(seconds=config.repeat_after)
    values: dict[str, Any] = {
        "severity": finding.severity,
        "summary": finding.summary,
        "figures": figures["figures"],
        "link": figures["link"],
        "updated_at": now,
    }
    # A firing alert is reminded after repeat_after, or at once when it got worse; one
    # acknowledged at a lower severity is news again when it gets worse.
    if (alert["state"] == "firing" and (worse or due)) or (
        alert["state"] == "acknowledged" and worse
    ):
        repeat = alert["repeats"] + 1
        told = alert_log.channels_told(connection, alert["id"])
        recipients = alert_log.first_recipients(connection, alert["id"])
        _notify(connection, alert["id"], told, "firing", figures, recipients, now, repeat)
        values.update(state="firing", repeats=repeat, last_notified_at=now)
        changes.repeated.append(alert["dedup_key"])
    alert_log.change_alert(connection, alert["id"], **values)


def _resolve(
    engine: Engine, key: str, config: AlertSettings, now: datetime, changes: Changes
) -> None:
    with write_transaction(engine) as connection:
        alert = alert_log.open_alert(connection, key)
        if alert is None:  # resolved meanwhile by another process
            return
        if alert["state"] == "pending":  # over before anyone was told: quietly
            alert_log.change_alert(
                connection, alert["id"], state="resolved", open_key=None, resolved_at=now
            )
            changes.resolved.append(key)
            return
        if now - _utc(alert["fired_at"]) < timedelta(seconds=config.min_firing):
            changes.held.append(key)
            return
        _close(connection, alert, _as_told(alert), now)
        changes.resolved.append(key)


def _escalate(
    engine: Engine,
    key: str,
    config: AlertSettings,
    routes: Routes,
    now: datetime,
    changes: Changes,
) -> None:
    """Unacknowledged for escalate_after: tell the next channels too."""
    with write_transaction(engine) as connection:
        alert = alert_log.open_alert(connection, key)
        if alert is None or alert["state"] != "firing" or alert["level"] != 0:
            return
        if now - _utc(alert["fired_at"]) < timedelta(seconds=config.escalate_after):
            return
        route = routes.of(alert["workflow"], alert["rule"])
        told = set(alert_log.channels_told(connection, alert["id"]))
        then = [name for name in route.then if name not in told]
        alert_log.change_alert(connection, alert["id"], level=1, updated_at=now)
        if not then:
            return
        figures = _as_told(alert)
        _notify(
            connection, alert["id"], then, "firing", figures, route.recipients, now, escalated=True
        )
        changes.escalated.append(key)


def acknowledge(
    engine: Engine, alert_id: str, by: str, now: datetime | None = None
) -> dict[str, Any]:
    """Acknowledge an open alert (its id or a unique start of it): no reminders, no
    escalation; the channels told of it hear that `by` has it. Acknowledging it again changes
    nothing."""
    now = now or datetime.now(timezone.utc)
    with write_transaction(engine) as connection:
        return _acknowledged(connection, _alert_named(connection, alert_id), by, now)


def resolve_by_hand(
    engine: Engine, alert_id: str, by: str, now: datetime | None = None
) -> dict[str, Any]:
    """Resolve an open alert whose rule can no longer say it is over (its workflow was
    deleted or renamed); the channels told of it hear that `by` resolved it. If its condition
    still holds, the next check fires a new alert."""
    now = now or datetime.now(timezone.utc)
    by = text(by, set(), ACKNOWLEDGED_BY_CHARS) or "someone"
    with write_transaction(engine) as connection:
        alert = _alert_named(connection, alert_id)
        if alert["state"] == "resolved":
            raise InputError(
                f"alert {alert['id'][-12:]} is resolved already", hint="nothing to resolve"
            )
        _close(connection, alert, _as_told(alert, f"(resolved by hand by {by})"), now)
        return {**alert, "state": "resolved", "resolved_at": now}


def _close(
    connection: Connection, alert: dict[str, Any], figures: dict[str, Any], now: datetime
) -> None:
    """Resolve a locked open alert and tell the channels told of it."""
    alert_log.change_alert(
        connection, alert["id"], state="resolved", open_key=None, resolved_at=now, updated_at=now
    )
    told = alert_log.channels_told(connection, alert["id"])
    recipients = alert_log.first_recipients(connection, alert["id"])
    _notify(connection, alert["id"], told, "resolved", figures, recipients, now)


def _as_told(alert: dict[str, Any], note: str = "") -> dict[str, Any]:
    """What a later message about an alert carries: its figures as they stand, and a note
    after its summary (who acknowledged or resolved it)."""
    return {
        "severity": alert["severity"],
        "summary": f"{alert['summary']} {note}".rstrip(),
        "figures": alert["figures"],
        "link": alert["link"],
    }


def _alert_named(connection: Connection, alert_id: str) -> dict[str, Any]:
    """The alert an id (or a unique start of it) names, locked."""
    found = alert_log.alert_ids_matching(connection, alert_id)
    if not found:
        raise NotFoundError(
            f"no alert {alert_id!r}", hint="`smallops alerts list` shows the alerts and ids"
        )
    if len(found) > 1:
        raise InputError(f"alert id {alert_id!r} matches several alerts", hint="give more of it")
    alert = alert_log.alert_by_id(connection, found[0], lock=True)
    assert alert is not None
    return alert


def acknowledge_key(
    engine: Engine,
    dedup_key: str,
    by: str,
    now: datetime | None = None,
    *,
    occurred_at: datetime | None = None,
) -> dict[str, Any] | None:
    """Acknowledge the open alert of a dedup key (PagerDuty acknowledged its incident); None
    when no alert of that key is open, or when the acknowledgement `occurred_at` before it
    fired: a late or replayed word about an earlier alert of the same key (each breaker alert
    of a workflow has the same one) must not silence this one."""
    now = now or datetime.now(timezone.utc)
    with write_transaction(engine) as connection:
        alert = alert_log.open_alert(connection, dedup_key)
        if alert is None or (occurred_at is not None and occurred_at < _utc(alert["fired_at"])):
            return None
        return _acknowledged(connection, alert, by, now)


def _acknowledged(
    connection: Connection, alert: dict[str, Any], by: str, now: datetime
) -> dict[str, Any]:
    """Mark a locked alert acknowledged and tell its channels; the same alert if it was. `by`
    is whatever a terminal, a form or PagerDuty said: made storable (no NUL, no lone surrogate
    from a non-UTF-8 argv) and cut to the column (alerts.acknowledged_by)."""
    by = text(by, set(), ACKNOWLEDGED_BY_CHARS) or "someone"
    if alert["state"] == "resolved":
        raise InputError(
            f"alert {alert['id'][-12:]} is resolved already", hint="nothing to acknowledge"
        )
    if alert["state"] == "acknowledged":
        return alert
    alert_log.change_alert(
        connection,
        alert["id"],
        state="acknowledged",
        acknowledged_at=now,
        acknowledged_by=by,
        updated_at=now,
    )
    figures = _as_told(alert, f"(acknowledged by {by})")
    told = alert_log.channels_told(connection, alert["id"])
    _notify(
        connection,
        alert["id"],
        told,
        "acknowledged",
        figures,
        alert_log.first_recipients(connection, alert["id"]),
        now,
    )
    return {**alert, "state": "acknowledged", "acknowledged_at": now, "acknowledged_by": by}


def _notify(
    connection: Connection,
    alert_id: str,
    channels: Sequence[str],
    event: NotifyEvent,
    figures: Mapping[str, Any],
    recipients: Sequence[str],
    now: datetime,
    repeat: int = 0,
    *,
    escalated: bool = False,
) -> None:
    alert_log.add_notifications(
        connection,
        [
            {
                "id": uuid7(),
                "alert_id": alert_id,
                "channel": channel,
                "event": event,
                "repeat": repeat,
                "escalated": escalated,
                "payload": {**figures, "at": now.isoformat()},
                "recipients": list(recipients),
                "state": "pending",
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            }
            for channel in channels
        ],
    )


def _link(config: AlertSettings, path: str | None) -> str | None:
    if not path or not config.dashboard_url:
        return None
    return config.dashboard_url + (path if path.startswith("/") else "/" + path)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
