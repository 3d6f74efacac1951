"""The PagerDuty and Slack channels against fakes of both services on 127.0.0.1."""

from __future__ import annotations

import email.utils
import json
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from smallops.alert_config import ChannelConfig, parse_alerts
from smallops.alerts.channels import build_channel, pagerduty
from smallops.alerts.model import Notification, Refused, Retry, Sent
from smallops.errors import ConfigError
from smallops.kinds import NotifyEvent

from pagerduty_fake import NORMAL, Answer, PagerDutyFake
from slack_fake import SlackFake, block_problems

FIRED = datetime(2026, 12, 1, 14, 3, 7, tzinfo=timezone.utc)
FIGURES = {"error_rate": 0.1412345, "errors": 28, "calls": 200, "window": "1h"}


def note(event: NotifyEvent = "firing", **changes: Any) -> Notification:
    base = Notification(
        id=f"n-{secrets.token_hex(4)}",
        alert_id="alert-1",
        event=event,
        rule="error_spike",
        workflow="email-triage",
        dedup_key="smallops:error_spike:email-triage",
        severity="error",
        summary="errors are 14.1% of 200 calls in the last hour (threshold 10%)",
        figures=FIGURES,
        link="https://ops.acme.example/workflows/email-triage?rule=error_spike&x=1",
        fired_at=FIRED,
        at=FIRED if event == "firing" else FIRED + timedelta(hours=1, minutes=5),
    )
    return replace(base, **changes)


def routing_key() -> str:
    return secrets.token_hex(16)  # 32 characters, made up here


@pytest.fixture
def pd() -> Iterator[PagerDutyFake]:
    with PagerDutyFake() as fake:
        yield fake


def pd_channel(fake: PagerDutyFake, key: str, **options: Any) -> Any:
    config = ChannelConfig("pager", "pagerduty", {"url": fake.url, **options})
    return build_channel(config, {"PAGERDUTY_ROUTING_KEY": key})


def assert_no_secret(text: str, secret: str) -> None:
    assert secret not in text
    for start in range(len(secret) - 8):  # nor any 8 characters of it
        assert secret[start : start + 8] not in text, text


# PagerDuty


def test_pagerduty_trigger_ack_resolve_move_one_incident(pd: PagerDutyFake) -> None:
    key = routing_key()
    channel = pd_channel(pd, key)
    firing = note()

    outcome = channel.send(firing)
    assert outcome == Sent("HTTP 202: success: Event processed")
    [incident] = pd.open_incidents()
    assert (incident.dedup_key, incident.routing_key) == (firing.dedup_key, key)
    assert (incident.severity, incident.summary) == ("error", firing.summary)

    assert isinstance(channel.send(note(repeat=1, at=FIRED + timedelta(hours=4))), Sent)
    assert pd.open_incidents() == [incident] and incident.triggers == 2  # deduplicated

    assert isinstance(channel.send(note("acknowledged")), Sent)
    assert incident.status == "acknowledged" and pd.open_incidents() == [incident]
    assert isinstance(channel.send(note("resolved")), Sent)
    assert incident.status == "resolved" and pd.open_incidents() == []
    assert incident.log == ["trigger", "trigger", "acknowledge", "resolve"]
    assert {event["dedup_key"] for event in pd.events} == {firing.dedup_key}


def test_pagerduty_trigger_carries_the_alert(pd: PagerDutyFake) -> None:
    channel = pd_channel(pd, routing_key(), source="acme-prod")
    firing = note(repeat=2, escalated=True, at=FIRED + timedelta(hours=8))
    assert isinstance(channel.send(firing), Sent)

    [event] = pd.events
    payload = event["payload"]
    assert event["event_action"] == "trigger"
    assert payload["summary"] == f"[escalated] {firing.summary}"
    assert (payload["source"], payload["severity"]) == ("acme-prod", "error")
    assert datetime.fromisoformat(payload["timestamp"]) == firing.at
    assert (payload["component"], payload["group"], payload["class"]) == (
        "email-triage",
        "smallops",
        "error_spike",
    )
    assert payload["custom_details"] == {
        **FIGURES,
        "fired_at": payload["custom_details"]["fired_at"],
        "repeat": 2,
        "escalated": True,
        "link": firing.link,
    }
    assert datetime.fromisoformat(payload["custom_details"]["fired_at"]) == FIRED
    assert event["links"] == [{"href": firing.link, "text": "Open in smallops"}]

    assert isinstance(channel.send(note(link=None, figures={"ratio": float("nan")})), Sent)
    second = pd.events[1]
    assert "links" not in second and second["payload"]["custom_details"]["link"] is None
    assert second["payload"]["custom_details"]["ratio"] == "nan"  # JSON has no NaN


def test_pagerduty_long_keys_and_summaries_fit_and_stay_stable(pd: PagerDutyFake) -> None:
    channel = pd_channel(pd, routing_key())
    long_key = "smallops:error_spike:" + "w" * 300
    firing = note(dedup_key=long_key, summary="s" * 2000)
    assert isinstance(channel.send(firing), Sent)
    assert isinstance(channel.send(replace(firing, repeat=1)), Sent)
    [incident] = pd.open_incidents()
    assert len(incident.dedup_key) == 255 and incident.triggers == 2
    assert len(incident.summary) == 1024 and incident.summary.endswith("…")
    assert isinstance(channel.send(note("resolved", dedup_key=long_key)), Sent)
    assert pd.open_incidents() == []
    # Two long keys with the same head are two alerts.
    assert pagerduty.dedup_key(long_key) != pagerduty.dedup_key(long_key + "x")


def test_pagerduty_event_over_512_kb_goes_without_its_figures(pd: PagerDutyFake) -> None:
    many = {f"figure_{i}": "f" * 1000 for i in range(600)}
    assert isinstance(pd_channel(pd, routing_key()).send(note(figures=many)), Sent)
    [body] = pd.bodies
    assert len(body) <= 512 * 1024
    details = pd.events[0]["payload"]["custom_details"]
    assert details["figures"] == "left out: over 512 KB" and details["repeat"] == 0
    assert "figure_0" not in details and len(pd.open_incidents()) == 1


def test_pagerduty_500_is_retried_then_sent() -> None:
    with PagerDutyFake(script=[Answer(500)]) as fake:
        channel = pd_channel(fake, routing_key())
        first = channel.send(note())
        assert isinstance(first, Retry) and first.after is None
        assert first.detail.startswith("HTTP 500")
        assert fake.open_incidents() == []
        assert channel.send(note()) == Sent("HTTP 202: success: Event processed")
        assert len(fake.open_incidents()) == 1


def test_pagerduty_400_is_refused_with_its_reasons(pd: PagerDutyFake) -> None:
    key = routing_key()[:31]  # one character short
    outcome = pd_channel(pd, key).send(note())
    assert isinstance(outcome, Refused)
    assert outcome.detail == (
        "HTTP 400: Event object is invalid"
        " (Length of 'routing_key' is incorrect (should be 32 characters))"
    )
    assert pd.events == [] and pd.open_incidents() == []


def test_pagerduty_429_retry_after_seconds_and_date() -> None:
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    with PagerDutyFake(script=[Answer(429, "17"), Answer(503, later)]) as fake:
        channel = pd_channel(fake, routing_key())
        first = channel.send(note())
        assert isinstance(first, Retry) and first.after == 17.0
        second = channel.send(note())
        assert isinstance(second, Retry) and second.after is not None
        assert 100 < second.after <= 120
        assert isinstance(channel.send(note()), Sent)


def test_pagerduty_routing_key_appears_in_no_detail_error_or_repr() -> None:
    key = routing_key()
    echo = json.dumps({"status": "invalid event", "message": f"unknown key {key}"})
    script = [
        Answer(400, body=echo),  # a proxy that repeats the request
        Answer(503, body=f"upstream refused {key}"),
        Answer(502, body="x" * 280 + key),  # the detail keeps 300 characters: half the key
        Answer(202, body=f'{{"status": "success", "message": "{key}"}}'),
    ]
    with PagerDutyFake(script=script) as fake:
        channel = pd_channel(fake, key)
        outcomes = [channel.send(note()) for _ in range(4)]
        outcomes += [channel.send(note("test")), channel.send(note("resolved"))]
        assert [type(o) for o in outcomes] == [Refused, Retry, Retry, Sent, Sent, Sent]
        assert "[routing key]" in outcomes[0].detail
        for outcome in outcomes:
            assert_no_secret(outcome.detail, key)
        assert all(key in body.decode() for body in fake.bodies)  # it was sent, every time
    assert_no_secret(repr(channel), key)
    unreachable = ChannelConfig("pager", "pagerduty", {"url": _closed_port_url()})
    outcome = build_channel(unreachable, {"PAGERDUTY_ROUTING_KEY": key}).send(note())
    assert isinstance(outcome, Retry) and outcome.detail.startswith("no answer")
    assert_no_secret(outcome.detail, key)


def test_pagerduty_test_event_opens_nothing_it_leaves(pd: PagerDutyFake) -> None:
    channel = pd_channel(pd, routing_key())
    test = note("test", severity="critical")
    outcome = channel.send(test)
    assert outcome == Sent(
        "trigger: HTTP 202: success: Event processed; resolve: HTTP 202: success: Event processed"
    )
    trigger, resolve = pd.events
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] != test.dedup_key
    assert trigger["payload"]["severity"] == "info"
    assert "test" in trigger["payload"]["summary"]
    assert pd.open_incidents() == [] and len(pd.incidents) == 1


def test_pagerduty_test_event_whose_resolve_failed_is_retried_whole() -> None:
    with PagerDutyFake(script=[NORMAL, Answer(500)]) as fake:
        channel = pd_channel(fake, routing_key())
        test = note("test")
        first = channel.send(test)
        assert isinstance(first, Retry) and "resolve: HTTP 500" in first.detail
        assert len(fake.open_incidents()) == 1  # left open, for now
        assert isinstance(channel.send(test), Sent)  # the outbox sends the same row again
        assert fake.open_incidents() == [] and len(fake.incidents) == 1


def test_pagerduty_without_its_key_names_the_variable(pd: PagerDutyFake) -> None:
    decoy = secrets.token_hex(16)
    with pytest.raises(ConfigError) as default:
        pd_channel(pd, "")
    assert "PAGERDUTY_ROUTING_KEY" in str(default.value)
    config = ChannelConfig("pager", "pagerduty", {"routing_key_env": "PD_ACME_KEY"})
    with pytest.raises(ConfigError) as named:
        build_channel(config, {"PAGERDUTY_ROUTING_KEY": decoy, "PD_ACME_KEY": "  "})
    assert "PD_ACME_KEY" in str(named.value) and decoy not in str(named.value)


# Slack, incoming webhook


@pytest.fixture
def slack() -> Iterator[SlackFake]:
    with SlackFake() as fake:
        yield fake


def webhook_channel(url: str) -> Any:
    return build_channel(ChannelConfig("ops-slack", "slack", {}), {"SLACK_WEBHOOK_URL": url})


def api_channel(fake: SlackFake, token: str | None = None) -> Any:
    config = ChannelConfig(
        "ops-thread",
        "slack",
        {"token_env": "SLACK_BOT_TOKEN", "channel": fake.channel, "api_url": fake.api_url},
    )
    return build_channel(config, {"SLACK_BOT_TOKEN": token or fake.token})


def test_slack_webhook_posts_block_kit_with_a_fallback(slack: SlackFake) -> None:
    channel = webhook_channel(slack.webhook_url)
    assert channel.send(note()) == Sent("HTTP 200: ok")
    [post] = slack.posts
    message = post.payload
    assert block_problems(message) == []
    header, section, context = message["blocks"]
    assert (header["type"], section["type"], context["type"]) == ("header", "section", "context")
    assert header["text"] == {
        "type": "plain_text",
        "text": ":rotating_light: FIRING: error_spike on email-triage",
    }
    fields = [f["text"] for f in section["fields"]]
    assert fields == [
        "*Workflow*\nemail-triage",
        "*Rule*\nerror_spike",
        "*Severity*\nerror",
        "*error_rate*\n0.1412",
        "*errors*\n28",
        "*calls*\n200",
        "*window*\n1h",
    ]
    link = "https://ops.acme.example/workflows/email-triage?rule=error_spike&amp;x=1"
    assert section["text"]["text"] == f"{note().summary}\n<{link}|Open in smallops>"
    assert "Fired <!date^" in context["elements"][0]["text"]
    assert "key `smallops:error_spike:email-triage`" in context["elements"][0]["text"]
    text = message["text"]
    for fact in ("FIRING", "error_spike", "email-triage", "(error)", "errors 28", "2026-12-01"):
        assert fact in text
    assert text.endswith(f"<{link}>")
    assert message["unfurl_links"] is False


def test_slack_states_and_a_resolution_that_names_its_firing(slack: SlackFake) -> None:
    channel = webhook_channel(slack.webhook_url)
    for event in ("firing", "acknowledged", "resolved", "test"):
        assert isinstance(channel.send(note(event)), Sent)
    headers = [post.payload["blocks"][0]["text"]["text"] for post in slack.posts]
    assert [h.split(" ")[1] for h in headers] == ["FIRING:", "ACKNOWLEDGED:", "RESOLVED:", "TEST:"]
    resolved = slack.posts[2].payload
    context = resolved["blocks"][-1]["elements"][0]["text"]
    assert context.startswith("Resolved <!date^") and " after 1h 5m · " in context
    assert f"the alert that fired <!date^{int(FIRED.timestamp())}^" in context
    assert "key `smallops:error_spike:email-triage`" in context
    assert "resolved 2026-12-01 15:08 UTC; fired 2026-12-01 14:03 UTC" in resolved["text"]
    assert "nothing is wrong" in slack.posts[3].payload["text"]
    assert all(post.thread_ts is None for post in slack.posts)


def test_slack_limits_hold_for_anything_an_alert_carries(slack: SlackFake) -> None:
    figures = {f"figure_{i}_<&>": "v&<" * 400 for i in range(14)}
    figures["ratio"] = float("inf")
    crowded = note(
        workflow="w" * 300,
        summary="<&>" * 2000,
        figures=figures,
        dedup_key="k" * 400,
        link="https://ops.acme.example/a|b?x=1&y=<2>",
    )
    for event in ("firing", "resolved"):
        assert webhook_channel(slack.webhook_url).send(replace(crowded, event=event)) == Sent(
            "HTTP 200: ok"
        )
    for post in slack.posts:
        message = post.payload
        assert block_problems(message) == [] and slack.refused == []
        header, section, more, _context = message["blocks"]
        assert len(header["text"]["text"]) <= 150 and header["text"]["text"].endswith("…")
        assert len(section["fields"]) == 10
        assert all(len(f["text"]) <= 2000 for f in section["fields"])
        assert len(section["text"]["text"]) <= 3000
        assert section["text"]["text"].endswith(
            "<https://ops.acme.example/a%7Cb?x=1&amp;y=&lt;2&gt;|Open in smallops>"
        )
        assert "figure_13_&lt;&amp;&gt;" in more["text"]["text"]
        assert 0 < len(message["text"]) <= 3000


def test_slack_fake_refuses_what_slack_refuses(slack: SlackFake) -> None:
    """The limits the test above relies on are checked: a header too long is refused."""
    overlong = {
        "text": "x",
        "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}],
    }
    assert block_problems(overlong) == ["blocks[0]: text is 151 characters, more than 150"]
    many = {"blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}]}
    assert block_problems(many) == ["blocks[0]: fields must be a list of 1 to 10"]
    assert block_problems({"blocks": []}) == ["no_text"]


def test_slack_webhook_429_is_retried_after_its_retry_after() -> None:
    with SlackFake(script=[(429, "rate_limited", "30"), (500, "rollup_error", None)]) as fake:
        channel = webhook_channel(fake.webhook_url)
        assert channel.send(note()) == Retry("HTTP 429: rate_limited", 30.0)
        assert channel.send(note()) == Retry("HTTP 500: rollup_error", None)
        assert channel.send(note()) == Sent("HTTP 200: ok")


def test_slack_webhook_refusals_are_final_and_keep_the_url_secret(slack: SlackFake) -> None:
    revoked = slack.webhook_url + "-revoked"
    outcome = webhook_channel(revoked).send(note())
    assert outcome == Refused("HTTP 404: no_service")
    with SlackFake(
        script=[(410, "channel_is_archived", None), (403, "action_prohibited", None)]
    ) as fake:
        channel = webhook_channel(fake.webhook_url)
        assert channel.send(note()) == Refused("HTTP 410: channel_is_archived")
        assert channel.send(note()) == Refused("HTTP 403: action_prohibited")
        assert_no_secret(repr(channel), fake.hook_path)
    assert slack.posts == []


# Slack, Web API


def test_slack_web_api_threads_what_follows_a_firing(slack: SlackFake) -> None:
    channel = api_channel(slack)
    fired = channel.send(note())
    assert isinstance(fired, Sent) and fired.thread["ts"]
    root = fired.thread["ts"]
    assert fired.detail == f"HTTP 200: ok, ts {root}"

    thread = dict(fired.thread)
    again = channel.send(note(repeat=1, at=FIRED + timedelta(hours=4), thread=thread))
    acked = channel.send(note("acknowledged", thread=thread))
    resolved = channel.send(note("resolved", thread=thread))
    assert isinstance(again, Sent) and isinstance(acked, Sent) and isinstance(resolved, Sent)
    assert again.thread == acked.thread == resolved.thread == thread  # the firing's, throughout

    first, reminder, ack, resolve = slack.posts
    assert first.thread_ts is None and first.ts == root
    assert (reminder.thread_ts, reminder.broadcast) == (root, True)
    assert (ack.thread_ts, ack.broadcast) == (root, False)
    assert (resolve.thread_ts, resolve.broadcast) == (root, True)  # the channel sees it end
    assert float(first.ts) < float(reminder.ts) < float(ack.ts) < float(resolve.ts)
    assert first.headers["authorization"] == f"Bearer {slack.token}"
    assert first.headers["content-type"] == "application/json; charset=utf-8"
    assert all(block_problems(post.payload) == [] for post in slack.posts)


def test_slack_web_api_test_message_starts_no_thread(slack: SlackFake) -> None:
    outcome = api_channel(slack).send(note("test", thread={"ts": "1.000001"}))
    assert isinstance(outcome, Sent) and outcome.thread == {}
    assert slack.posts[0].thread_ts is None


def test_slack_web_api_refusals_and_rate_limits(slack: SlackFake) -> None:
    wrong = f"xoxb-fake-{secrets.token_hex(12)}"
    outcome = api_channel(slack, wrong).send(note())
    assert outcome == Refused("HTTP 200: invalid_auth")
    assert_no_secret(outcome.detail, wrong)
    other = ChannelConfig(
        "c", "slack", {"token_env": "T", "channel": "#elsewhere", "api_url": slack.api_url}
    )
    assert build_channel(other, {"T": slack.token}).send(note()) == Refused(
        "HTTP 200: channel_not_found"
    )
    with SlackFake(script=[(429, "ratelimited", "12"), (200, "ratelimited", None)]) as fake:
        channel = api_channel(fake)
        assert channel.send(note()) == Retry("HTTP 429: ratelimited", 12.0)
        assert channel.send(note()) == Retry("HTTP 200: ratelimited", None)
        assert isinstance(channel.send(note()), Sent)


def test_slack_without_its_secret_names_the_variable() -> None:
    with pytest.raises(ConfigError) as webhook:
        build_channel(ChannelConfig("s", "slack", {}), {})
    assert "SLACK_WEBHOOK_URL" in str(webhook.value)
    config = ChannelConfig("s", "slack", {"webhook_url_env": "ACME_SLACK_URL"})
    not_a_url = f"hooks.slack.example/services/{secrets.token_hex(8)}"
    with pytest.raises(ConfigError) as bad:
        build_channel(config, {"ACME_SLACK_URL": not_a_url})
    assert "ACME_SLACK_URL" in str(bad.value) and not_a_url not in str(bad.value)
    api = ChannelConfig("s", "slack", {"token_env": "ACME_BOT_TOKEN", "channel": "#ops"})
    with pytest.raises(ConfigError) as token:
        build_channel(api, {"SLACK_WEBHOOK_URL": "https://hooks.slack.example/x"})
    assert "ACME_BOT_TOKEN" in str(token.value)


def test_channels_build_from_the_alerts_table(pd: PagerDutyFake, slack: SlackFake) -> None:
    """The option names the modules read are the ones smallops.toml is checked against."""
    settings = parse_alerts(
        {
            "channels": {
                "pager": {"kind": "pagerduty", "routing_key_env": "PD_KEY", "url": pd.url},
                "hook": {"kind": "slack", "webhook_url_env": "HOOK_URL"},
                "thread": {
                    "kind": "slack",
                    "token_env": "BOT",
                    "channel": slack.channel,
                    "api_url": slack.api_url,
                },
            }
        }
    )
    env = {"PD_KEY": routing_key(), "HOOK_URL": slack.webhook_url, "BOT": slack.token}
    for name, config in settings.channels.items():
        channel = build_channel(config, env)
        assert (channel.name, channel.kind) == (name, config.kind)
        assert isinstance(channel.send(note()), Sent), name
    assert len(pd.open_incidents()) == 1 and len(slack.posts) == 2


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v2/enqueue"
