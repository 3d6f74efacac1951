"""Sending the alerts' outbox: each due notification to its channel, until the service takes it.

One notification at a time is leased (LEASE), so two senders never send the same one, and a
sender that dies mid-send leaves it to the next one when the lease runs out. A 429 or 5xx (or
no answer) is tried again after a backoff, or after the Retry-After the service gave if that is
longer (an hour at most: a firing alert is not kept back for longer on a service's word, and a
Retry-After of years must not stop the round); another 4xx is recorded and never retried, and
so is a notification still failing after MAX_ATTEMPTS. A channel whose secret is not set yet
waits like a failed send: set the variable and the next round sends it. Its id is the same on
every attempt (the webhook-id, the mail's Message-ID), so a receiver that got a message twice
can tell.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast

from smallops.alert_config import AlertSettings
from smallops.alerts.channels import build_channel
from smallops.alerts.model import Channel, Notification, Outcome, Refused, Retry, Sent
from smallops.errors import ConfigError
from smallops.kinds import NotifyEvent, RuleName, Severity
from smallops.storage import alert_log
from smallops.storage.db import write_transaction

if TYPE_CHECKING:
    from smallops.storage.db import Engine

LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 12  # about six hours of backoff (30 s doubling, at most an hour apart)
FIRST_BACKOFF = 30.0  # seconds; doubled each attempt
MAX_BACKOFF = 3600.0
MAX_RETRY_AFTER = MAX_BACKOFF  # the longest Retry-After waited out
log = logging.getLogger("smallops")


@dataclass(frozen=True)
class Attempt:
    """One send: which notification, to which channel, and how it went."""

    notification_id: str
    alert_id: str
    channel: str
    event: str
    outcome: str  # sent | retry | failed
    detail: str


def backoff(attempts: int) -> float:
    return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, attempts - 1)))


class Outbox:
    """The due notifications of one database, sent through the channels of [alerts]."""

    def __init__(self, engine: Engine, config: AlertSettings, env: Mapping[str, str]) -> None:
        self.engine = engine
        self.config = config
        self.env = env
        self._channels: dict[str, Channel] = {}

    def channel(self, name: str) -> Channel:
        """The channel, built once; ConfigError if it is not configured or lacks a secret."""
        if name not in self._channels:
            known = self.config.channels.get(name)
            if known is None:
                raise ConfigError(
                    f"channel {name!r} is not in [alerts.channels] any more",
                    hint="add it back to smallops.toml, or this message is not sent",
                )
            self._channels[name] = build_channel(known, self.env)
        return self._channels[name]

    def send_due(self, now: datetime | None = None, limit: int = 200) -> list[Attempt]:
        """Send what is due now, one at a time, at most `limit`. A channel that did not take a
        message (no answer, a 429 or 5xx) is not tried again this round: its other messages
        wait for the next one rather than each waiting out its own timeout here, ahead of the
        other channels' (a page behind a dozen messages to a Slack that is down)."""
        attempts: list[Attempt] = []
        resting: set[str] = set()
        for _ in range(limit):
            moment = now or datetime.now(timezone.utc)
            with write_transaction(self.engine) as connection:
                row = alert_log.claim_due(connection, moment, moment + LEASE, resting)
            if row is None:
                break
            attempt = self._send(row, moment)
            if attempt.outcome == "retry":
                resting.add(attempt.channel)
            attempts.append(attempt)
        return attempts

    def _send(self, row: dict[str, Any], now: datetime) -> Attempt:
        try:
            channel = self.channel(row["channel"])
        except ConfigError as exc:
            configured = row["channel"] in self.config.channels
            outcome: Outcome = (
                Retry(f"{exc.message} ({exc.hint})") if configured else Refused(exc.message)
            )
        else:
            outcome = _attempt(channel, notification_of(row))
        values: dict[str, Any]
        if isinstance(outcome, Sent):
            values = {"state": "sent", "sent_at": now, "detail": outcome.detail}
            result = "sent"
        elif isinstance(outcome, Retry) and row["attempts"] < MAX_ATTEMPTS:
            wait = min(max(backoff(row["attempts"]), outcome.after or 0.0), MAX_RETRY_AFTER)
            values = {"next_attempt_at": now + timedelta(seconds=wait), "detail": outcome.detail}
            result = "retry"
        else:
            values = {"state": "failed", "detail": outcome.detail}
            result = "failed"
        with write_transaction(self.engine) as connection:
            alert_log.finish(connection, row["id"], **values)
            if isinstance(outcome, Sent) and outcome.thread:
                alert_log.remember_thread(
                    connection, row["alert_id"], row["channel"], outcome.thread
                )
        if result == "failed":
            log.warning(
                "smallops: alert notification to %s not sent: %s", row["channel"], outcome.detail
            )
        return Attempt(
            row["id"], row["alert_id"], row["channel"], row["event"], result, outcome.detail
        )


def _attempt(channel: Channel, notification: Notification) -> Outcome:
    """One send; a channel that raises (it should not) is a failed attempt to retry. Only the
    exception's type is kept: its text could hold the URL or key the channel was using."""
    try:
        return channel.send(notification)
    except Exception as exc:
        return Retry(f"the {channel.kind} channel failed: {type(exc).__name__}")


def notification_of(row: Mapping[str, Any]) -> Notification:
    """The message an outbox row (with its alert's columns) stands for."""
    payload = row["payload"] or {}
    thread = (row.get("alert_thread") or {}).get(row["channel"], {})
    return Notification(
        id=str(row["id"]),
        alert_id=str(row["alert_id"]),
        event=cast(NotifyEvent, row["event"]),
        rule=cast(RuleName, row["rule"]),
        workflow=str(row["workflow"]),
        dedup_key=str(row["dedup_key"]),
        severity=cast(Severity, payload.get("severity", "warning")),
        summary=str(payload.get("summary", "")),
        figures=dict(payload.get("figures") or {}),
        link=payload.get("link"),
        fired_at=_utc(row["fired_at"]),
        at=_utc(datetime.fromisoformat(payload["at"]))
        if payload.get("at")
        else _utc(row["created_at"]),
        repeat=int(row["repeat"]),
        escalated=bool(row["escalated"]),
        thread={str(k): str(v) for k, v in thread.items()},
        recipients=tuple(str(r) for r in row.get("recipients") or ()),
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
