"""`smallops alerts` as a person and a script use it: check, list (table and --json), ack by
short id, and test a channel, printing exactly what the service answered; mistakes are one
line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from smallops.ids import short_id
from smallops.storage.db import ensure_schema, get_engine, normalise_url

from conftest import smallops
from pagerduty_fake import Answer, PagerDutyFake
from slack_fake import SlackFake
from test_alert_rules import review_row, run_row, write


@pytest.fixture
def folder(tmp_path: Path, capsys: Any) -> Path:
    folder = tmp_path / "ops"
    assert smallops(capsys, "init", str(folder))[0] == 0
    return folder


def configure(folder: Path, text: str) -> None:
    toml = folder / "smallops.toml"
    toml.write_text(toml.read_text() + "\n" + text)


def old_review_item(folder: Path) -> None:
    """A pending item of email-triage two hours old (the SLA below is one hour)."""
    engine = get_engine(normalise_url("sqlite:///.smallops/smallops.db", folder))
    ensure_schema(engine)
    created = datetime.now(timezone.utc) - timedelta(hours=2)
    run = run_row("email-triage", created, status="pending_review")
    write(engine, [run], [review_row(run, created)])


def test_check_list_and_ack_an_alert(folder, capsys, monkeypatch):
    with SlackFake() as slack:
        monkeypatch.setenv("TEST_SLACK_URL", slack.webhook_url)
        configure(
            folder,
            '[alerts.channels.chat]\nkind = "slack"\nwebhook_url_env = "TEST_SLACK_URL"\n'
            '[alerts.workflows.email-triage]\nchannels = ["chat"]\n'
            '[alerts.workflows.email-triage.rules.review_backlog]\nsla = "1h"\n',
        )
        old_review_item(folder)
        code, out, err = smallops(capsys, "-p", str(folder), "alerts", "check")
        assert code == 0, err
        assert "fired     smallops:review_backlog:email-triage" in out
        assert "sent      firing to chat: HTTP 200: ok" in out and "1 alert open" in out
        code, out, _ = smallops(capsys, "-p", str(folder), "alerts", "check")
        assert code == 0 and "fired" not in out and "sent" not in out
        monkeypatch.setenv("COLUMNS", "80")
        code, out, _ = smallops(capsys, "-p", str(folder), "alerts", "list")
        assert code == 0 and "review_backlog" in out
        assert all(len(line) <= 80 for line in out.splitlines()), out
        code, out, _ = smallops(capsys, "-p", str(folder), "alerts", "list", "--json")
        [alert] = [json.loads(line) for line in out.splitlines()]
        assert alert["state"] == "firing" and alert["notifications"][0]["state"] == "sent"
        assert slack.webhook_url not in out
        code, out, _ = smallops(
            capsys, "-p", str(folder), "alerts", "ack", short_id(alert["id"]), "--by", "ann"
        )
        assert code == 0 and "acknowledged" in out and "as ann" in out
        assert "sent      acknowledged to chat" in out
        code, _, err = smallops(capsys, "-p", str(folder), "alerts", "ack", short_id(alert["id"]))
        assert code == 0  # acknowledged already: nothing changes
        code, _, err = smallops(capsys, "-p", str(folder), "alerts", "ack", "0000nothing0")
        assert code != 0 and err.startswith("error: no alert") and len(err.splitlines()) <= 2


def test_alerts_test_prints_exactly_what_the_service_answered(folder, capsys, monkeypatch):
    key = secrets.token_hex(16)
    with PagerDutyFake(script=[Answer(400, body='{"status":"invalid event"}')]) as pd:
        configure(folder, f'[alerts.channels.pager]\nkind = "pagerduty"\nurl = "{pd.url}"\n')
        monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", key)
        code, out, _ = smallops(capsys, "-p", str(folder), "alerts", "test", "pager")
        assert code == 1 and "pager (pagerduty): refused: HTTP 400" in out and key not in out
        code, out, _ = smallops(capsys, "-p", str(folder), "alerts", "test", "pager")
        assert code == 0 and "pager (pagerduty): sent:" in out
        assert pd.open_incidents() == []  # the test incident is resolved at once
    code, _, err = smallops(capsys, "-p", str(folder), "alerts", "test", "pagr")
    assert code != 0 and "no channel 'pagr'" in err and "pager" in err
    monkeypatch.delenv("PAGERDUTY_ROUTING_KEY")
    code, _, err = smallops(capsys, "-p", str(folder), "alerts", "test", "pager")
    assert code != 0 and "PAGERDUTY_ROUTING_KEY" in err and "Traceback" not in err


def test_a_mistake_in_the_alerts_table_is_one_line(folder, capsys):
    configure(folder, '[alerts.workflows.email-triage]\nchannels = ["nope"]\n')
    code, _, err = smallops(capsys, "-p", str(folder), "alerts", "check")
    assert code == 2 and "names channel 'nope'" in err and len(err.strip().splitlines()) == 1


def test_an_alert_whose_workflow_is_gone_is_resolved_by_hand(folder, capsys, monkeypatch):
    with SlackFake() as slack:
        monkeypatch.setenv("TEST_SLACK_URL", slack.webhook_url)
        configure(
            folder,
            '[alerts.channels.chat]\nkind = "slack"\nwebhook_url_env = "TEST_SLACK_URL"\n'
            '[alerts.rules.review_backlog]\nsla = "1h"\nchannels = ["chat"]\n',
        )
        old_review_item(folder)
        assert smallops(capsys, "-p", str(folder), "alerts", "check")[0] == 0
        code, out, _ = smallops(capsys, "-p", str(folder), "alerts", "list", "--json")
        [alert] = [json.loads(line) for line in out.splitlines()]
        code, out, err = smallops(
            capsys, "-p", str(folder), "alerts", "resolve", short_id(alert["id"]), "--by", "bo"
        )
        assert code == 0 and "resolved" in out and "sent      resolved to chat" in out, err
        assert "resolved by hand by bo" in str(slack.posts[-1].payload)
        code, out, _ = smallops(capsys, "-p", str(folder), "alerts", "list", "--open")
        assert "no alerts" in out
        code, _, err = smallops(capsys, "-p", str(folder), "alerts", "resolve", alert["id"])
        assert code != 0 and "resolved already" in err
