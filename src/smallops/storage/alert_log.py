"""The alerts' rows: alert instances and their outbox (smallops.alerts.engine and .outbox).

The functions that change state are steps of the caller's write transaction. `open_alert` locks
the open alert of a dedup key (`FOR UPDATE` on Postgres; SQLite's write lock is taken when the
transaction begins), so two processes checking the rules at once see each other's work: one
fires, resolves or escalates it, the other finds it done. `claim_due` leases one notification
with `FOR UPDATE SKIP LOCKED`, and never one whose earlier message to the same channel about the
same alert is still waiting, so a resolution never overtakes its firing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from smallops.errors import InputError
from smallops.kinds import OPEN_STATES
from smallops.storage.queries import MIN_ID_GIVEN, run_id_matches
from smallops.storage.schema import alert_notifications, alerts


def open_alert(connection: Connection, dedup_key: str) -> dict[str, Any] | None:
    """The open alert of a dedup key, locked until the transaction ends; None if none."""
    query = select(alerts).where(alerts.c.open_key == dedup_key).with_for_update()
    row = connection.execute(query).first()
    return dict(row._mapping) if row is not None else None


def open_alerts(connection: Connection, *, lock: bool = False) -> list[dict[str, Any]]:
    """Every open alert (pending, firing or acknowledged), oldest first."""
    query = select(alerts).where(alerts.c.open_key.is_not(None)).order_by(alerts.c.fired_at)
    if lock:
        query = query.with_for_update()
    return [dict(row._mapping) for row in connection.execute(query)]


def alert_by_id(
    connection: Connection, alert_id: str, *, lock: bool = False
) -> dict[str, Any] | None:
    query = select(alerts).where(alerts.c.id == alert_id)
    if lock:
        query = query.with_for_update()
    row = connection.execute(query).first()
    return dict(row._mapping) if row is not None else None


def alert_ids_matching(connection: Connection, given: str) -> list[str]:
    """Up to two alert ids `given` may stand for: the id, its short form as `alerts list`
    prints it, or a unique start of either (as run ids are matched)."""
    if len(given.strip()) < MIN_ID_GIVEN:
        raise InputError(
            f"alert id {given.strip()!r} is too short",
            hint=f"give at least {MIN_ID_GIVEN} characters of the id `smallops alerts list` prints",
        )
    query = select(alerts.c.id).where(run_id_matches(alerts.c.id, given)).limit(2)
    return [str(value) for value in connection.execute(query).scalars()]


class OpenedElsewhere(Exception):
    """Another process opened an alert of the same dedup key first (the unique `open_key`):
    the caller's transaction is spoiled; try again, and find that alert open."""


def add_alert(connection: Connection, alert: Mapping[str, Any]) -> None:
    """Open an alert; OpenedElsewhere when one of its dedup key is open already."""
    try:
        connection.execute(alerts.insert().values(**alert))
    except IntegrityError as exc:
        raise OpenedElsewhere(alert.get("dedup_key")) from exc


def change_alert(connection: Connection, alert_id: str, **values: Any) -> None:
    connection.execute(update(alerts).where(alerts.c.id == alert_id).values(**values))


def add_notifications(connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        connection.execute(alert_notifications.insert(), [dict(row) for row in rows])


def channels_told(connection: Connection, alert_id: str) -> list[str]:
    """The channels an alert has been sent to (or is waiting to be), in the order first told."""
    query = (
        select(alert_notifications.c.channel, func.min(alert_notifications.c.created_at))
        .where(alert_notifications.c.alert_id == alert_id)
        .where(alert_notifications.c.event == "firing")
        .group_by(alert_notifications.c.channel)
        .order_by(func.min(alert_notifications.c.created_at))
    )
    return [str(row[0]) for row in connection.execute(query)]


def first_recipients(connection: Connection, alert_id: str) -> list[str]:
    """The addresses an alert's first message went to (for an email channel without its own
    `to`: the owner's), so its later messages go to the same people."""
    query = (
        select(alert_notifications.c.recipients)
        .where(alert_notifications.c.alert_id == alert_id)
        .order_by(alert_notifications.c.created_at, alert_notifications.c.id)
        .limit(1)
    )
    row = connection.execute(query).first()
    return [str(r) for r in (row.recipients or [])] if row is not None else []


def recent_alerts(
    engine: Engine, *, include_resolved: bool = True, limit: int = 100
) -> list[dict[str, Any]]:
    """Open alerts first (newest first), then resolved ones, newest first."""
    query = select(alerts)
    if not include_resolved:
        query = query.where(alerts.c.state.in_(OPEN_STATES))
    query = query.order_by(alerts.c.resolved_at.is_not(None), alerts.c.fired_at.desc()).limit(limit)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def notifications_of(engine: Engine, alert_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Each alert's notifications, oldest first."""
    if not alert_ids:
        return {}
    query = (
        select(alert_notifications)
        .where(alert_notifications.c.alert_id.in_(list(alert_ids)))
        .order_by(alert_notifications.c.created_at, alert_notifications.c.id)
    )
    found: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as connection:
        for row in connection.execute(query):
            found.setdefault(str(row.alert_id), []).append(dict(row._mapping))
    return found


def claim_due(
    connection: Connection, now: datetime, until: datetime, skip: Collection[str] = ()
) -> dict[str, Any] | None:
    """Lease until `until` the next pending notification due at `now` and not leased, whose
    earlier messages to the same channel about the same alert are all done, to a channel not
    in `skip`; with its alert's thread. None when there is none."""
    n = alert_notifications.c
    earlier = aliased(alert_notifications)
    waiting_before = exists().where(
        and_(
            earlier.c.alert_id == n.alert_id,
            earlier.c.channel == n.channel,
            earlier.c.state == "pending",
            or_(
                earlier.c.created_at < n.created_at,
                and_(earlier.c.created_at == n.created_at, earlier.c.id < n.id),
            ),
        )
    )
    query = (
        select(
            alert_notifications,
            alerts.c.thread.label("alert_thread"),
            alerts.c.rule,
            alerts.c.workflow,
            alerts.c.dedup_key,
            alerts.c.fired_at,
        )
        .join(alerts, alerts.c.id == n.alert_id)
        .where(n.state == "pending")
        .where(n.next_attempt_at <= now)
        .where(or_(n.claimed_until.is_(None), n.claimed_until < now))
        .where(~waiting_before)
        .where(n.channel.not_in(list(skip)))
        .order_by(n.next_attempt_at, n.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=alert_notifications)
    )
    row = connection.execute(query).first()
    if row is None:
        return None
    found = dict(row._mapping)
    connection.execute(
        update(alert_notifications)
        .where(n.id == found["id"])
        .values(claimed_until=until, attempts=n.attempts + 1)
    )
    found["attempts"] += 1
    return found


def finish(connection: Connection, notification_id: str, **values: Any) -> None:
    """Record how a send ended: sent, failed for good, or pending again with its next time."""
    connection.execute(
        update(alert_notifications)
        .where(alert_notifications.c.id == notification_id)
        .values(claimed_until=None, **values)
    )


def remember_thread(
    connection: Connection, alert_id: str, channel: str, thread: Mapping[str, str]
) -> None:
    """Keep what a channel answered (e.g. Slack's ts) on the alert, for its later messages."""
    row = connection.execute(
        select(alerts.c.thread).where(alerts.c.id == alert_id).with_for_update()
    ).first()
    if row is None:
        return
    merged = dict(row.thread or {})
    merged[channel] = {**merged.get(channel, {}), **thread}
    connection.execute(update(alerts).where(alerts.c.id == alert_id).values(thread=merged))


def waiting(engine: Engine) -> int:
    """Notifications not yet sent (pending)."""
    query = (
        select(func.count())
        .select_from(alert_notifications)
        .where(alert_notifications.c.state == "pending")
    )
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def open_alert_counts(engine: Engine) -> dict[tuple[str, str, str], int]:
    """Open alerts counted per (workflow, rule, state): what `/metrics` reports as firing."""
    a = alerts.c
    query = (
        select(a.workflow, a.rule, a.state, func.count())
        .where(a.open_key.is_not(None))
        .group_by(a.workflow, a.rule, a.state)
    )
    with engine.connect() as connection:
        return {
            (str(workflow), str(rule), str(state)): int(n)
            for workflow, rule, state, n in connection.execute(query)
        }
