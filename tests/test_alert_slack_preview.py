"""What the Slack channel sends, looked at: its firing and resolution messages, through the
Slack fake (which checks Block Kit's rules and limits), previewed in Chromium at desktop and
phone width into the test artifacts (tests/blockkit_preview.py lays the blocks out as Slack
does; it is not Slack's renderer). README.md shows the desktop one (docs/slack-alert.png)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from smallops.alert_config import ChannelConfig
from smallops.alerts.channels import build_channel
from smallops.alerts.model import Notification, Sent

from blockkit_preview import page
from slack_fake import SlackFake

FIRED = datetime(2026, 12, 9, 12, 0, tzinfo=timezone.utc)


def cost_alert(event: str, at: datetime) -> Notification:
    return Notification(
        id=f"n-{event}",
        alert_id="0190f3a2-7c1e-7d4b-9a8e-3f9c01d2a7b4",
        event=event,  # type: ignore[arg-type]
        rule="cost_surprise",
        workflow="email-triage",
        dedup_key="smallops:cost_surprise:email-triage:2026-W50",
        severity="warning",
        summary="email-triage: $25.00 this week (to Wed 12:00) against $10.00 a week before "
        "(+150%)",
        figures={"cost_usd": 25.0, "mean_usd": 10.0, "change": 1.5, "weeks_compared": 4},
        link="https://ops.acme.example/workflows/email-triage",
        fired_at=FIRED,
        at=at,
    )


def test_the_slack_messages_of_an_alert_previewed_in_chromium():
    from test_web_browser import ARGS, ARTIFACTS, CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with SlackFake() as slack:
        channel = build_channel(
            ChannelConfig("chat", "slack"), {"SLACK_WEBHOOK_URL": slack.webhook_url}
        )
        for event, at in (("firing", FIRED), ("resolved", FIRED + timedelta(hours=5, minutes=10))):
            assert isinstance(channel.send(cost_alert(event, at)), Sent)
        assert slack.refused == []
        firing, resolved = (post.payload for post in slack.posts)
    html = page([(firing, None), (resolved, None)])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            for size, width in (("desktop", 760), ("phone", 390)):
                view = browser.new_page(viewport={"width": width, "height": 600})
                view.set_content(html)
                text = view.inner_text("body")
                assert "FIRING" in text and "RESOLVED" in text and "email-triage" in text
                assert "$25.00" in text and "Open in smallops" in text
                overflow = view.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"the preview is {overflow} px wider than {width} px"
                view.screenshot(path=str(ARTIFACTS / f"slack-alert-{size}.png"), full_page=True)
                view.close()
        finally:
            browser.close()
