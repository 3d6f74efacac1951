"""Alerts end to end, as issue 12 states them: the rules over a real log (SQLite and Postgres),
the engine, the outbox and the four channels against services on 127.0.0.1 that behave like the
real ones (a PagerDuty Events v2 fake, a Slack fake, a Standard Webhooks receiver, an aiosmtpd
server), with a frozen clock; and two `smallops alerts check` processes at once.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from smallops.alert_config import parse_alerts
from smallops.alerts.check import check_once
from smallops.config import Settings
from smallops.storage.alert_log import recent_alerts
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.schema import alert_notifications

from pagerduty_fake import Answer, PagerDutyFake
from slack_fake import SlackFake
from smtp_receiver import SMTPReceiver
from test_alert_rules import (
    MONDAY,
    WEEK,
    WEEK_END,
    earlier_weeks,
    make,
    review_row,
    run_row,
    spread,
    write,
)
from webhook_receiver import Receiver

COST_KEY = "smallops:cost_surprise:triage:2026-W50"
OWNER = "ops@example.com"


@dataclass
class Services:
    pd: PagerDutyFake
    slack: SlackFake
    hooks: Receiver
    smtp: SMTPReceiver
    env: dict[str, str]
    hook_secret: str

    def channels(self) -> dict[str, Any]:
        return {
            "pager": {"kind": "pagerduty", "url": self.pd.url},
            "chat": {"kind": "slack", "webhook_url_env": "TEST_SLACK_URL"},
            "hooks": {"kind": "webhook", "url": self.hooks.url, "secret_env": "TEST_HOOK_SECRET"},
            "mail": {
                "kind": "email",
                "host": "127.0.0.1",
                "port": self.smtp.port,
                "security": "none",
                "from": "smallops <alerts@example.com>",
            },
        }


@pytest.fixture
def services() -> Iterator[Services]:
    hook_secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with (
        PagerDutyFake() as pd,
        SlackFake() as slack,
        Receiver() as hooks,
        SMTPReceiver() as smtp,
    ):
        env = {
            "PAGERDUTY_ROUTING_KEY": secrets.token_hex(16),
            "TEST_SLACK_URL": slack.webhook_url,
            "TEST_HOOK_SECRET": hook_secret,
        }
        yield Services(pd, slack, hooks, smtp, env, hook_secret)


def project(tmp_path: Path, database_url: str, alerts: dict[str, Any]) -> Settings:
    return Settings(root=tmp_path, database_url=database_url, alerts=parse_alerts(alerts))


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Any:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return engine


def notifications(engine: Any) -> list[tuple[str, str, str]]:
    n = alert_notifications.c
    with engine.connect() as c:
        rows = c.execute(select(n.channel, n.event, n.state).order_by(n.created_at, n.id))
        return [(str(a), str(b), str(s)) for a, b, s in rows]


def test_a_cost_surprise_is_sent_once_on_every_channel_and_resolved_once_when_cost_falls_back(
    engine, tmp_path, database_url, services
):
    s = services
    alerts = {
        "channels": s.channels(),
        "workflows": {"triage": {"channels": ["pager", "chat", "hooks", "mail"]}},
        "dashboard_url": "https://ops.example",
    }
    settings = project(tmp_path, database_url, alerts)
    wf = make(tmp_path, database_url, owner=OWNER, settings=settings)
    write(engine, earlier_weeks("triage", [9.5, 10.5, 10.0, 10.0]))  # about $10 a week
    write(engine, spread("triage", MONDAY, 25.0, 25, 6))  # then $25 this week
    first = check_once(engine, {"triage": wf}, settings, s.env, now=WEEK_END)
    assert first.changes.fired == [COST_KEY] and first.changes.problems == []
    assert sorted((a.channel, a.outcome) for a in first.attempts) == [
        ("chat", "sent"),
        ("hooks", "sent"),
        ("mail", "sent"),
        ("pager", "sent"),
    ]
    # exactly one trigger on each channel
    [incident] = s.pd.incidents
    assert (incident.dedup_key, incident.status, incident.triggers) == (COST_KEY, "triggered", 1)
    assert len(s.slack.posts) == 1 and "cost_surprise" in str(s.slack.posts[0].payload)
    [(body, headers)] = s.hooks.accepted
    event = Webhook(s.hook_secret).verify(body, headers)
    assert event["type"] == "alert.firing" and event["data"]["dedup_key"] == COST_KEY
    assert event["data"]["link"] == "https://ops.example/workflows/triage"
    [mail] = s.smtp.messages
    assert OWNER in mail.rcpt_tos
    # no content: figures, names and links only
    assert "[user]" not in body and "email 1" not in body
    # again, and again: nothing new
    for minutes in (5, 10):
        again = check_once(
            engine, {"triage": wf}, settings, s.env, now=WEEK_END + timedelta(minutes=minutes)
        )
        assert again.changes.fired == [] and again.attempts == []
    assert (len(s.pd.events), len(s.slack.posts), len(s.hooks.accepted), len(s.smtp.messages)) == (
        1,
        1,
        1,
        1,
    )
    # the next week's cost is back to normal: one resolution, the same dedup key
    next_week = MONDAY + WEEK
    write(engine, spread("triage", next_week, 1.0, 2, 6))
    later = check_once(engine, {"triage": wf}, settings, s.env, now=next_week + timedelta(hours=20))
    assert later.changes.resolved == [COST_KEY] and later.changes.fired == []
    assert [e["event_action"] for e in s.pd.events] == ["trigger", "resolve"]
    assert {e["dedup_key"] for e in s.pd.events} == {COST_KEY} and s.pd.open_incidents() == []
    assert len(s.slack.posts) == 2
    resolved = Webhook(s.hook_secret).verify(*s.hooks.accepted[1])
    assert resolved["type"] == "alert.resolved" and resolved["data"]["dedup_key"] == COST_KEY
    first_mail, second_mail = s.smtp.messages
    assert second_mail.message["In-Reply-To"] == first_mail.message["Message-ID"]
    assert first_mail.message["Message-ID"] in second_mail.message["References"]
    assert sorted(notifications(engine)) == sorted(
        (c, e, "sent") for e in ("firing", "resolved") for c in ("pager", "chat", "hooks", "mail")
    )


def test_pagerduty_answering_500_then_202_makes_one_incident_under_one_dedup_key(
    engine, tmp_path, database_url
):
    with PagerDutyFake(script=[Answer(500)]) as pd:
        env = {"PAGERDUTY_ROUTING_KEY": secrets.token_hex(16)}
        alerts = {
            "channels": {"pager": {"kind": "pagerduty", "url": pd.url}},
            "workflows": {"triage": {"channels": ["pager"]}},
        }
        settings = project(tmp_path, database_url, alerts)
        wf = make(tmp_path, database_url, owner=OWNER, settings=settings)
        write(engine, earlier_weeks("triage", [10.0] * 4))
        write(engine, spread("triage", MONDAY, 25.0, 25, 6))
        first = check_once(engine, {"triage": wf}, settings, env, now=WEEK_END)
        assert [a.outcome for a in first.attempts] == ["retry"] and "HTTP 500" in first.attempts[
            0
        ].detail
        too_soon = check_once(
            engine, {"triage": wf}, settings, env, now=WEEK_END + timedelta(seconds=10)
        )
        assert too_soon.attempts == []  # the backoff: 30 s
        later = check_once(
            engine, {"triage": wf}, settings, env, now=WEEK_END + timedelta(minutes=1)
        )
        assert [a.outcome for a in later.attempts] == ["sent"]
        assert len(pd.bodies) == 2 and len(pd.incidents) == 1
        assert pd.incidents[0].dedup_key == COST_KEY and pd.incidents[0].triggers == 1


def test_an_old_review_item_escalates_from_slack_to_pagerduty_unless_acknowledged(
    engine, tmp_path, database_url, services
):
    from smallops.alerts.engine import acknowledge

    s = services
    alerts = {
        "channels": s.channels(),
        "owners": {OWNER: ["chat"]},
        "workflows": {
            "triage": {"escalate_to": ["pager"], "rules": {"review_backlog": {"sla": "4h"}}}
        },
        "escalate_after": "15m",
    }
    settings = project(tmp_path, database_url, alerts)
    wf = make(tmp_path, database_url, owner=OWNER, settings=settings)
    t0 = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)
    run = run_row("triage", t0 - timedelta(hours=5), status="pending_review")
    write(engine, [run], [review_row(run, t0 - timedelta(hours=5))])
    fired = check_once(engine, {"triage": wf}, settings, s.env, now=t0)
    assert fired.changes.fired == ["smallops:review_backlog:triage"]
    assert len(s.slack.posts) == 1 and s.pd.events == []
    quiet = check_once(engine, {"triage": wf}, settings, s.env, now=t0 + timedelta(minutes=14))
    assert quiet.changes.escalated == [] and s.pd.events == []
    escalated = check_once(engine, {"triage": wf}, settings, s.env, now=t0 + timedelta(minutes=16))
    assert escalated.changes.escalated == ["smallops:review_backlog:triage"]
    [event] = s.pd.events
    assert (
        event["event_action"] == "trigger"
        and event["dedup_key"] == "smallops:review_backlog:triage"
    )
    assert "[escalated]" in event["payload"]["summary"]

    # the same, acknowledged in time: no escalation, and Slack hears who has it
    other = tmp_path / "other"
    other.mkdir()
    url = f"sqlite:///{other / 'log.db'}" if database_url.startswith("sqlite") else database_url
    if not database_url.startswith("sqlite"):
        return  # one log per test on Postgres: the first half covers it there
    engine2 = get_engine(normalise_url(url, other))
    ensure_schema(engine2)
    write(engine2, [run], [review_row(run, t0 - timedelta(hours=5))])
    before = len(s.pd.events)
    check_once(engine2, {"triage": wf}, settings, s.env, now=t0)
    [alert] = recent_alerts(engine2)
    acknowledge(engine2, alert["id"], "ann", t0 + timedelta(minutes=5))
    late = check_once(engine2, {"triage": wf}, settings, s.env, now=t0 + timedelta(minutes=30))
    assert late.changes.escalated == [] and len(s.pd.events) == before
    assert "acknowledged" in str(s.slack.posts[-1].payload).lower()


def test_two_failures_in_three_calls_page_nobody_and_forty_in_two_hundred_do(
    engine, tmp_path, database_url, services
):
    s = services
    alerts = {"channels": s.channels(), "workflows": {"triage": {"channels": ["chat"]}}}
    settings = project(tmp_path, database_url, alerts)
    wf = make(tmp_path, database_url, owner=OWNER, settings=settings)
    now = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    at = now - timedelta(minutes=30)
    rows = [
        run_row("triage", at, error="server_error", status="queued_for_human") for _ in range(2)
    ]
    rows.append(run_row("triage", at))
    write(engine, rows)
    assert check_once(engine, {"triage": wf}, settings, s.env, now=now).changes.fired == []
    assert s.slack.posts == []
    rows = [
        run_row("triage", at, error="server_error", status="queued_for_human") for _ in range(38)
    ]
    rows += [run_row("triage", at) for _ in range(159)]
    write(engine, rows)  # 40 failures in 200 calls
    fired = check_once(engine, {"triage": wf}, settings, s.env, now=now).changes.fired
    assert "smallops:error_spike:triage" in fired
    assert any("error_spike" in str(p.payload) for p in s.slack.posts)


def test_two_alerts_check_processes_at_once_send_one_notification(
    project_folder, database_url, tmp_path
):
    folder = project_folder
    with Receiver() as hooks:
        toml = folder / "smallops.toml"
        toml.write_text(
            toml.read_text()
            + '\n[alerts.channels.hooks]\nkind = "webhook"\n'
            + f'url = "{hooks.url}"\nsecret_env = "TEST_HOOK_SECRET"\n'
            + '[alerts.workflows.email-triage]\nchannels = ["hooks"]\n'
            + '[alerts.workflows.email-triage.rules.review_backlog]\nsla = "1h"\n'
        )
        env = {
            **os.environ,
            "SMALLOPS_DATABASE_URL": database_url,
            "TEST_HOOK_SECRET": "whsec_" + base64.b64encode(os.urandom(32)).decode(),
        }
        engine = get_engine(normalise_url(database_url, folder))
        ensure_schema(engine)
        created = datetime.now(timezone.utc) - timedelta(hours=2)
        run = run_row("email-triage", created, status="pending_review")
        write(engine, [run], [review_row(run, created)])
        command = [
            sys.executable,
            "-c",
            "import sys; from smallops.cli import main; main(sys.argv[1:])",
        ]
        processes = [
            subprocess.Popen(
                [*command, "alerts", "check"],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120) for p in processes]
        for _, err in outputs:
            assert "Traceback" not in err, err
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not hooks.accepted:
            time.sleep(0.05)
        assert len(hooks.accepted) == 1, (outputs, hooks.ids)
        fired = [out for out, _ in outputs if "fired" in out]
        assert len(fired) == 1, outputs
        assert len(recent_alerts(engine)) == 1


@pytest.fixture
def project_folder(tmp_path: Path, capsys: Any) -> Path:
    from conftest import smallops

    folder = tmp_path / "ops"
    assert smallops(capsys, "init", str(folder))[0] == 0
    return folder


# --- through the provider emulator and the official SDK ---------------------------------------


def emulated(settings: Any, alerts: dict[str, Any]) -> Settings:
    """The conftest project settings (the emulator as openai) with this [alerts] table."""
    from dataclasses import replace

    return replace(settings, alerts=parse_alerts(alerts))


def settled(wf: Any, until: Any, seconds: float = 5.0) -> None:
    """Wait for the writer to land what `until()` waits for (guard events are written apart)."""
    wf.plan().writer.flush()
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_provider_outage_opens_the_breaker_alert_and_recovery_resolves_it(
    make_workflow, emulator, settings, services
):
    from smallops.resilience.breaker import BreakerConfig

    from emulators import ok, status
    from models import GOOD

    s = services
    alerts = {
        "channels": s.channels(),
        "workflows": {"triage": {"channels": ["pager"]}},
        "min_firing": "1s",
    }
    project_settings = emulated(settings, alerts)
    breaker = BreakerConfig(failure_rate=0.5, min_calls=4, window=5, open_for=1.0, probes=1)
    wf = make_workflow(breaker=breaker, retries=0, settings=project_settings, owner=OWNER)
    engine = wf.plan().writer.store.engine
    emulator.default = status(500)
    inputs = {"subject": "Invoice", "body": "Where is it?"}
    for _ in range(5):
        wf.run(**inputs)
    key = "smallops:breaker_open:triage"

    def fired() -> bool:
        return bool(
            check_once(engine, {"triage": wf}, project_settings, s.env, send=False).changes.firing
        )

    settled(wf, fired)
    first = check_once(engine, {"triage": wf}, project_settings, s.env)
    assert key in first.changes.firing
    assert [e["event_action"] for e in s.pd.events] == ["trigger"]
    assert (
        s.pd.events[0]["dedup_key"] == key and s.pd.events[0]["payload"]["severity"] == "critical"
    )
    emulator.default = ok(GOOD)
    time.sleep(1.2)  # open_for: the next call is the probe, and it closes the breaker
    assert wf.run(**inputs).error is None

    def closed() -> bool:
        done = check_once(engine, {"triage": wf}, project_settings, s.env, send=False)
        return key not in done.changes.firing

    settled(wf, closed)
    check_once(engine, {"triage": wf}, project_settings, s.env)
    assert [e["event_action"] for e in s.pd.events] == ["trigger", "resolve"]
    assert s.pd.open_incidents() == []


def test_a_served_model_other_than_the_pinned_one_is_one_silent_upgrade_alert(
    make_workflow, emulator, settings, services
):
    from emulators import ok
    from models import GOOD

    s = services
    alerts = {"channels": s.channels(), "workflows": {"triage": {"channels": ["chat"]}}}
    project_settings = emulated(settings, alerts)
    wf = make_workflow(settings=project_settings, owner=OWNER, retries=0)
    engine = wf.plan().writer.store.engine
    emulator.default = ok(GOOD, model="gpt-4o-mini-2025-03-01")  # not the pinned snapshot
    for _ in range(3):
        assert wf.run(subject="Invoice", body="Where is it?").error is None
    wf.plan().writer.flush()
    first = check_once(engine, {"triage": wf}, project_settings, s.env)
    key = "smallops:model_mismatch:triage:gpt-4o-mini-2025-03-01"
    assert first.changes.fired == [key]
    [post] = s.slack.posts
    assert "gpt-4o-mini-2025-03-01" in str(post.payload)
    wf.run(subject="Invoice", body="Again")
    wf.plan().writer.flush()
    again = check_once(engine, {"triage": wf}, project_settings, s.env)
    assert again.changes.fired == [] and len(s.slack.posts) == 1
