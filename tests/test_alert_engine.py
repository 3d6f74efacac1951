"""The alert engine and outbox on SQLite and Postgres: each alert fires once, reminds after
repeat_after, escalates when nobody acknowledges it, resolves once after min_firing, however
many processes check at once; the outbox retries 429/5xx after Retry-After, records a refusal,
and never sends a resolution before its firing."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smallops.alert_config import AlertSettings, ChannelConfig, WorkflowAlerts
from smallops.alerts.engine import acknowledge, apply
from smallops.alerts.model import Finding, Notification, Outcome, Refused, Retry, Sent
from smallops.alerts.outbox import Outbox
from smallops.errors import InputError
from smallops.storage.db import direct_engine, ensure_schema, get_engine, normalise_url
from smallops.storage.schema import alert_notifications, alerts

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)


@dataclass
class Evaluation:
    findings: list[Finding]
    checked: set[tuple[str, str]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def cost(firing: bool = True, severity: str = "warning") -> Finding:
    return Finding(
        rule="cost_surprise",
        workflow="triage",
        firing=firing,
        severity=severity,  # type: ignore[arg-type]
        period="2026-W49",
        summary="triage: $25.00 this week against $10.00 a week before",
        figures={"cost_usd": 25.0, "mean_usd": 10.0},
        link="/workflows/triage",
    )


def checked_cost(*findings: Finding) -> Evaluation:
    return Evaluation(list(findings), {("cost_surprise", "triage")})


CONFIG = AlertSettings(
    channels={
        "chat": ChannelConfig("chat", "slack"),
        "pager": ChannelConfig("pager", "pagerduty"),
    },
    workflows={"triage": WorkflowAlerts(channels=("chat",), escalate_to=("pager",))},
    dashboard_url="https://ops.example",
    repeat_after=4 * 3600,
    min_firing=600,
    escalate_after=900,
)
OWNERS = {"triage": "ops@example.com"}


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Any:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return engine


def notes(engine: Any) -> list[tuple[str, str, str]]:
    """(channel, event, state) of every notification, oldest first."""
    n = alert_notifications.c
    with engine.connect() as c:
        query = select(n.channel, n.event, n.state).order_by(n.created_at, n.id)
        return [tuple(row) for row in c.execute(query)]  # type: ignore[misc]


def alert_rows(engine: Any) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(select(alerts).order_by(alerts.c.fired_at))]


def test_an_alert_fires_once_reminds_after_repeat_after_and_resolves_once(engine):
    changes = apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0)
    assert changes.fired == ["smallops:cost_surprise:triage:2026-W49"]
    assert notes(engine) == [("chat", "firing", "pending")]
    assert alert_rows(engine)[0]["link"] == "https://ops.example/workflows/triage"
    for minutes in (1, 5, 14):  # checked again: nothing new (escalation needs level 0 + 15 min)
        changes = apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0 + minutes * MIN)
        assert changes.fired == changes.repeated == []
    assert len(notes(engine)) == 1
    acknowledge(engine, alert_rows(engine)[0]["id"][-12:], "ann", T0 + 14 * MIN)
    changes = apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0 + 5 * 60 * MIN)
    assert changes.repeated == [] and changes.escalated == []  # acknowledged: quiet
    changes = apply(engine, checked_cost(), CONFIG, OWNERS, T0 + 6 * 60 * MIN)
    assert changes.resolved == ["smallops:cost_surprise:triage:2026-W49"]
    assert notes(engine) == [
        ("chat", "firing", "pending"),
        ("chat", "acknowledged", "pending"),
        ("chat", "resolved", "pending"),
    ]
    assert apply(engine, checked_cost(), CONFIG, OWNERS, T0 + 7 * 60 * MIN).resolved == []
    row = alert_rows(engine)[0]
    assert row["state"] == "resolved" and row["open_key"] is None
    # the same condition again later is a new alert with the same dedup key
    assert apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0 + 8 * 60 * MIN).fired
    assert [r["dedup_key"] for r in alert_rows(engine)] == [row["dedup_key"]] * 2


def test_unacknowledged_it_reminds_after_repeat_after_and_at_once_when_it_gets_worse(engine):
    config = replace(CONFIG, workflows={"triage": WorkflowAlerts(("chat",))})
    apply(engine, checked_cost(cost()), config, OWNERS, T0)
    assert apply(engine, checked_cost(cost()), config, OWNERS, T0 + 3 * 60 * MIN).repeated == []
    assert apply(engine, checked_cost(cost()), config, OWNERS, T0 + 4 * 60 * MIN).repeated
    worse = cost(severity="critical")
    assert apply(engine, checked_cost(worse), config, OWNERS, T0 + 4 * 60 * MIN + MIN).repeated
    assert [e for _, e, _ in notes(engine)] == ["firing"] * 3
    assert alert_rows(engine)[0]["repeats"] == 2


def test_an_alert_over_too_soon_is_held_until_min_firing_so_it_does_not_flap(engine):
    apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0)
    changes = apply(engine, checked_cost(), CONFIG, OWNERS, T0 + 5 * MIN)
    assert changes.held and not changes.resolved
    assert apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0 + 6 * MIN).fired == []
    assert apply(engine, checked_cost(), CONFIG, OWNERS, T0 + 11 * MIN).resolved


def test_a_rule_that_could_not_be_checked_resolves_nothing(engine):
    apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0)
    unchecked = Evaluation([], set(), ["cost_surprise: the database did not answer"])
    changes = apply(engine, unchecked, CONFIG, OWNERS, T0 + 60 * MIN)
    assert changes.resolved == [] and changes.problems and len(changes.firing) == 1


def test_nobody_acknowledges_it_escalates_once_to_the_next_channel(engine):
    apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0)
    assert apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0 + 14 * MIN).escalated == []
    assert apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0 + 15 * MIN).escalated
    assert apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0 + 30 * MIN).escalated == []
    assert notes(engine) == [("chat", "firing", "pending"), ("pager", "firing", "pending")]
    apply(engine, checked_cost(), CONFIG, OWNERS, T0 + 40 * MIN)
    assert sorted(notes(engine)[2:]) == [
        ("chat", "resolved", "pending"),
        ("pager", "resolved", "pending"),
    ]


def test_acknowledged_in_time_it_does_not_escalate(engine):
    apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0)
    alert = acknowledge(engine, alert_rows(engine)[0]["id"], "ann", T0 + 10 * MIN)
    assert alert["state"] == "acknowledged" and alert["acknowledged_by"] == "ann"
    assert acknowledge(engine, alert["id"], "bob", T0 + 11 * MIN)["acknowledged_by"] == "ann"
    assert apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0 + 60 * MIN).escalated == []
    assert [c for c, _, _ in notes(engine)] == ["chat", "chat"]
    apply(engine, checked_cost(), CONFIG, OWNERS, T0 + 61 * MIN)
    with pytest.raises(InputError, match="resolved already"):
        acknowledge(engine, alert["id"], "ann", T0 + 62 * MIN)


def test_two_processes_checking_at_once_fire_and_resolve_once(database_url, tmp_path):
    first = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(first)
    engines = [first, direct_engine(first)]  # two engines, as two processes have

    def together(evaluation: Evaluation, at: datetime) -> None:
        start = threading.Barrier(len(engines))
        errors: list[BaseException] = []

        def one(engine: Any) -> None:
            start.wait()
            try:
                apply(engine, evaluation, CONFIG, OWNERS, at)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(e,)) for e in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors

    for _ in range(3):
        together(checked_cost(cost()), T0)
    together(checked_cost(), T0 + 20 * MIN)
    events = [(c, e) for c, e, _ in notes(first)]
    assert events.count(("chat", "firing")) == 1 and events.count(("chat", "resolved")) == 1
    assert len(alert_rows(first)) == 1


class Recording:
    """A channel that answers from a script and records what it was sent."""

    def __init__(self, name: str, answers: list[Outcome]) -> None:
        self.name, self.kind = name, "slack"
        self.answers = answers
        self.sent: list[Notification] = []

    def send(self, notification: Notification) -> Outcome:
        self.sent.append(notification)
        return self.answers.pop(0) if self.answers else Sent("ok")


def outbox(engine: Any, channels: dict[str, Recording]) -> Outbox:
    box = Outbox(engine, CONFIG, {})
    box._channels.update(channels)  # type: ignore[arg-type]
    return box


def test_the_outbox_retries_after_retry_after_with_the_same_id_and_keeps_the_thread(engine):
    chat = Recording("chat", [Retry("HTTP 429", after=120), Sent("ok", thread={"ts": "1.1"})])
    box = outbox(engine, {"chat": chat})
    apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0)
    assert [a.outcome for a in box.send_due(T0)] == ["retry"]
    assert box.send_due(T0 + MIN) == []  # Retry-After: 120 s, longer than the first backoff
    assert [a.outcome for a in box.send_due(T0 + 2 * MIN)] == ["sent"]
    assert chat.sent[0].id == chat.sent[1].id  # the same message, tried again
    apply(engine, checked_cost(), CONFIG, OWNERS, T0 + 20 * MIN)
    box.send_due(T0 + 20 * MIN)
    resolved = chat.sent[-1]
    assert resolved.event == "resolved" and resolved.thread == {"ts": "1.1"}
    assert resolved.figures == {"cost_usd": 25.0, "mean_usd": 10.0}
    assert resolved.link == "https://ops.example/workflows/triage"


def test_a_refusal_is_recorded_never_retried_and_a_resolution_waits_for_its_firing(engine):
    chat = Recording("chat", [Retry("HTTP 503"), Refused("HTTP 404: no_service")])
    box = outbox(engine, {"chat": chat})
    apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0)
    box.send_due(T0)  # 503: firing waits 30 s
    apply(engine, checked_cost(), CONFIG, OWNERS, T0 + 11 * MIN)  # resolved meanwhile
    assert [n.event for n in chat.sent] == ["firing"]
    attempts = box.send_due(T0 + 11 * MIN)  # firing first (refused for good), then the resolution
    assert [(a.event, a.outcome) for a in attempts] == [("firing", "failed"), ("resolved", "sent")]
    assert box.send_due(T0 + 60 * MIN) == []
    assert [s for _, _, s in notes(engine)] == ["failed", "sent"]


def test_a_channel_without_its_secret_waits_and_one_no_longer_configured_fails(engine, monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    apply(engine, checked_cost(cost()), CONFIG, OWNERS, T0)
    attempts = Outbox(engine, CONFIG, {}).send_due(T0)
    assert [a.outcome for a in attempts] == ["retry"]
    assert "SLACK_WEBHOOK_URL" in attempts[0].detail
    gone = replace(CONFIG, channels={})
    attempts = Outbox(engine, gone, {}).send_due(T0 + 60 * MIN)
    assert [a.outcome for a in attempts] == ["failed"] and "any more" in attempts[0].detail


def test_a_rule_with_channels_of_its_own_goes_there_instead_of_the_workflows(engine):
    from smallops.alert_config import parse_alerts

    config = parse_alerts(
        {
            "channels": {"chat": {"kind": "slack"}, "pager": {"kind": "pagerduty"}},
            "workflows": {"triage": {"channels": ["chat"]}},
            "rules": {"breaker_open": {"channels": ["pager"]}},
        }
    )
    breaker = Finding(rule="breaker_open", workflow="triage", firing=True, severity="critical")
    evaluation = Evaluation([breaker, cost()], {("cost_surprise", "triage")})
    apply(engine, evaluation, config, OWNERS, T0)
    assert sorted(notes(engine)) == [("chat", "firing", "pending"), ("pager", "firing", "pending")]
    with pytest.raises(Exception, match="names channel 'phone'"):
        parse_alerts({"rules": {"budget": {"channels": ["phone"]}}})
