"""Alerts in the web UI: the overview lists the open ones, a reviewer acknowledges one with a
CSRF-checked form (or JSON), and PagerDuty's signed v3 webhook acknowledges the alert whose
dedup key is its incident's key; an unsigned or wrongly signed one changes nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from smallops.alert_config import AlertSettings, ChannelConfig
from smallops.alerts.engine import apply
from smallops.alerts.model import Finding
from smallops.config import Settings
from smallops.review.desk import ReviewDesk
from smallops.storage.alert_log import recent_alerts
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.web.alerts_page import PAGERDUTY_SECRET_ENV
from smallops.web.app import create_app

JSON_HEADERS = {"Accept": "application/json"}


class Evaluation:
    def __init__(self, findings: list[Finding]) -> None:
        self.findings, self.checked, self.problems = findings, set(), []


def fire(engine: Any) -> str:
    finding = Finding(
        rule="breaker_open",
        workflow="triage",
        firing=True,
        severity="critical",
        summary="triage: the circuit breaker is open (7 failures in 10 calls)",
        figures={"failures": 7, "calls": 10},
    )
    config = AlertSettings(
        channels={"pager": ChannelConfig("pager", "pagerduty")}, owners={"ops": ("pager",)}
    )
    apply(engine, Evaluation([finding]), config, {"triage": "ops"}, datetime.now(timezone.utc))
    return finding.dedup_key


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> tuple[TestClient, Any]:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    desk = ReviewDesk(engine, {})
    settings = Settings(root=tmp_path, database_url=database_url)
    app = create_app(desk, settings, require_login=False, reviewer="ann", secret_key=b"k" * 32)
    return TestClient(app, base_url="http://127.0.0.1"), engine


def test_the_overview_lists_open_alerts_and_a_reviewer_acknowledges_one(app):
    client, engine = app
    assert "No open alerts" in client.get("/dashboard").text
    fire(engine)
    page = client.get("/dashboard")
    assert "breaker_open" in page.text and "7 failures in 10 calls" in page.text
    data = client.get("/dashboard", headers=JSON_HEADERS).json()
    [alert] = data["alerts"]
    assert alert["state"] == "firing" and alert["severity"] == "critical"
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token
    refused = client.post(f"/alerts/{alert['id']}/ack", data={"csrf": "wrong"})
    assert refused.status_code == 403 and recent_alerts(engine)[0]["state"] == "firing"
    done = client.post(
        f"/alerts/{alert['id']}/ack", data={"csrf": token.group(1)}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == "/dashboard#alerts"
    stored = recent_alerts(engine)[0]
    assert stored["state"] == "acknowledged" and stored["acknowledged_by"] == "ann"
    assert "by ann" in client.get("/dashboard").text
    missing = client.post("/alerts/nope-not-an-alert/ack", data={"csrf": token.group(1)})
    assert missing.status_code == 404


def signed(secret: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-PagerDuty-Signature": f"v1=0000,v1={digest}", "Content-Type": "application/json"}


def test_pagerdutys_signed_acknowledgement_acknowledges_the_alert_of_its_incident_key(
    app, monkeypatch
):
    client, engine = app
    key = fire(engine)
    event = {
        "event": {
            "event_type": "incident.acknowledged",
            "agent": {"summary": "Bo On-Call"},
            "data": {"type": "incident", "incident_key": key, "status": "acknowledged"},
        }
    }
    body = json.dumps(event).encode()
    assert client.post("/alerts/pagerduty", content=body).status_code == 404  # off: no secret
    secret = "pd-webhook-" + hashlib.sha256(b"test").hexdigest()[:20]
    monkeypatch.setenv(PAGERDUTY_SECRET_ENV, secret)
    assert (
        client.post("/alerts/pagerduty", content=body, headers=signed("other", body)).status_code
        == 401
    )
    assert client.post("/alerts/pagerduty", content=body).status_code == 401
    assert recent_alerts(engine)[0]["state"] == "firing"
    answer = client.post("/alerts/pagerduty", content=body, headers=signed(secret, body))
    assert answer.status_code == 202 and answer.json()["acknowledged"]
    stored = recent_alerts(engine)[0]
    assert (
        stored["state"] == "acknowledged" and stored["acknowledged_by"] == "PagerDuty: Bo On-Call"
    )
    other = json.dumps({"event": {"event_type": "incident.triggered", "data": {}}}).encode()
    assert client.post(
        "/alerts/pagerduty", content=other, headers=signed(secret, other)
    ).json() == {"ignored": "incident.triggered"}
