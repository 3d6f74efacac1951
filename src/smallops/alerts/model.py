"""What a rule finds, what a channel is sent, and what the channel's service answered."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from smallops.kinds import ChannelKind, NotifyEvent, RuleName, Severity

#: A figure an alert carries: a number, a name or a time as text; never prompt or output text.
Figure = float | int | str | bool | None


@dataclass(frozen=True)
class Finding:
    """One rule's verdict on one workflow (or on the project, `workflow` "*") now.

    `period` makes the dedup key: the same rule, workflow and period is the same alert ("2026-W49"
    for this week's cost, "month:2026-12" for a budget, the served model for a mismatch, "" for
    a rule with no period). `firing` False says the condition is over (or never was)."""

    rule: RuleName
    workflow: str
    firing: bool
    severity: Severity = "warning"
    period: str = ""
    summary: str = ""  # one line: names and figures only
    figures: Mapping[str, Figure] = field(default_factory=dict)
    link: str | None = None  # a dashboard path ("/workflows/email-triage"), made absolute later

    @property
    def dedup_key(self) -> str:
        """Stable per rule, workflow and period: PagerDuty's dedup_key, the webhook's alert id."""
        return ":".join(("smallops", self.rule, self.workflow, self.period)).rstrip(":")


@dataclass(frozen=True)
class Notification:
    """One message to one channel about one alert."""

    id: str  # the outbox row's id: the same across retries (the webhook-id, the Message-ID)
    alert_id: str
    event: NotifyEvent
    rule: RuleName
    workflow: str
    dedup_key: str
    severity: Severity
    summary: str
    figures: Mapping[str, Figure]
    link: str | None  # absolute when the project sets alerts.dashboard_url, else None
    fired_at: datetime
    at: datetime  # when this event happened
    repeat: int = 0  # 0: the first firing; n: the nth reminder or escalation
    escalated: bool = False  # sent because nobody acknowledged it in time
    thread: Mapping[str, str] = field(default_factory=dict)  # what this channel sent before
    recipients: tuple[str, ...] = ()  # email: who, when the channel names nobody itself


@dataclass(frozen=True)
class Sent:
    """The service took it. `thread` is what to remember for later messages about the same
    alert (a Slack message's ts), `detail` what it answered, for `alerts test` and the log."""

    detail: str
    thread: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Retry:
    """Worth trying again (a 429, a 5xx, no answer); `after` is the Retry-After, in seconds."""

    detail: str
    after: float | None = None


@dataclass(frozen=True)
class Refused:
    """The service refused it for good (a 4xx other than 429, a bad address): recorded, never
    retried."""

    detail: str


Outcome = Sent | Retry | Refused


class Channel(Protocol):
    """A configured destination. `send` makes one attempt and never raises for what the
    service answers; the outbox retries."""

    name: str
    kind: ChannelKind

    def send(self, notification: Notification) -> Outcome: ...
