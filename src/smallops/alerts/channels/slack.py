"""Slack: an incoming webhook, or the Web API's chat.postMessage with a bot token and a channel.

    [alerts.channels.ops-slack]
    kind = "slack"
    webhook_url_env = "SLACK_WEBHOOK_URL"   # the default; the URL itself is a secret

    [alerts.channels.ops-thread]
    kind = "slack"                          # the Web API: the resolution goes in the thread
    token_env = "SLACK_BOT_TOKEN"
    channel = "#ops-alerts"
    # api_url = "https://slack.com/api"

A message is Block Kit blocks and a plain `text` with the same facts, for notifications and
clients that show no blocks. With the Web API a firing's ts is kept (Sent.thread) and what
follows about the alert is posted in its thread, a resolution broadcast to the channel as well.
A webhook cannot thread: a resolution is a new message that names the firing it ends.

A webhook answers 200 "ok", or an error word with a 4xx (refused) or a 429 or 5xx (retried).
The Web API answers 200 {"ok": false, "error": ...} for a refusal, and 429 when rate limited.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from smallops.alert_config import ChannelConfig
from smallops.alerts.channels import _http
from smallops.alerts.channels._secrets import scrubbed
from smallops.alerts.model import Figure, Notification, Outcome, Refused, Retry, Sent
from smallops.errors import ConfigError
from smallops.kinds import ChannelKind, NotifyEvent
from smallops.redact import MIN_SECRET

DEFAULT_WEBHOOK_ENV = "SLACK_WEBHOOK_URL"
DEFAULT_API_URL = "https://slack.com/api"
# Slack's limits, in characters.
MAX_HEADER = 150
MAX_SECTION = 3000
MAX_FIELDS = 10
MAX_CONTEXT = 3000
MAX_TEXT = 3000  # the fallback; Slack cuts a message at 40,000, and long ones are unreadable
# Ours: a field is a name and a short value, so ten of them still read at a glance.
MAX_FIELD_NAME = 60
MAX_FIELD_VALUE = 120
#: Web API errors that say "later", not "never".
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

STATES: dict[NotifyEvent, str] = {
    "firing": "FIRING",
    "acknowledged": "ACKNOWLEDGED",
    "resolved": "RESOLVED",
    "test": "TEST",
}
ICONS: dict[NotifyEvent, str] = {
    "firing": ":rotating_light:",
    "acknowledged": ":eyes:",
    "resolved": ":white_check_mark:",
    "test": ":test_tube:",
}
_URL = re.compile(r"^https?://[^/\s]+")


def build(config: ChannelConfig, env: Mapping[str, str]) -> Slack:
    """The channel: the Web API when the table names token_env and channel, else a webhook."""
    token_env, channel = config.options.get("token_env"), config.options.get("channel")
    where = f"channel {config.name!r} (slack)"
    if token_env or channel:
        if not (token_env and channel):
            raise ConfigError(
                f"{where} needs token_env and channel together",
                hint="name both to post with the Web API, or neither to use a webhook",
            )
        token = env.get(str(token_env), "").strip()
        if not token:
            raise ConfigError(
                f"{where} needs a bot token in ${token_env}, which is not set",
                hint=f"set {token_env} to the app's Bot User OAuth Token (it needs chat:write,"
                " and the app must be in the channel)",
            )
        api_url = str(config.options.get("api_url", DEFAULT_API_URL)).rstrip("/")
        return Slack(config.name, f"{api_url}/chat.postMessage", token, channel=str(channel))
    variable = str(config.options.get("webhook_url_env", DEFAULT_WEBHOOK_ENV))
    url = env.get(variable, "").strip()
    if not url:
        raise ConfigError(
            f"{where} needs the incoming webhook URL in ${variable}, which is not set",
            hint=f"set {variable} to the app's Incoming Webhook URL, or name another variable"
            " in webhook_url_env",
        )
    if not _URL.match(url):
        raise ConfigError(
            f"{where}: ${variable} does not hold an http:// or https:// URL",
            hint="it should hold the Incoming Webhook URL, https://hooks.slack.com/services/...",
        )
    return Slack(config.name, url, url)


class Slack:
    """One Slack destination. `channel` set: the Web API with `secret` as the bot token;
    unset: `url` is an incoming webhook and is itself the secret."""

    kind: ChannelKind = "slack"

    def __init__(self, name: str, url: str, secret: str, *, channel: str | None = None) -> None:
        self.name = name
        self.channel = channel
        self._url = url
        self._secret = secret

    def __repr__(self) -> str:
        mode = f"channel={self.channel!r}" if self.channel else "webhook"
        return f"Slack(name={self.name!r}, {mode})"

    def send(self, notification: Notification) -> Outcome:
        payload = message(notification)
        if self.channel is None:
            outcome = _http.post_json(self._url, payload, accepted=_webhook_answer)
            outcome = scrubbed(outcome, self._secret, "webhook URL")
            return scrubbed(outcome, _path(self._url), "webhook URL")
        return scrubbed(self._post_message(notification, payload), self._secret, "token")

    def _post_message(self, notification: Notification, payload: dict[str, Any]) -> Outcome:
        """chat.postMessage, in the alert's thread when this channel posted its firing."""
        parent = _parent(notification, self.channel)
        payload["channel"] = self.channel
        if parent is not None:
            payload["thread_ts"] = parent
            # A resolution or a reminder is news for the channel, an acknowledgement is not.
            payload["reply_broadcast"] = notification.event != "acknowledged"
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Authorization": f"Bearer {self._secret}",
        }
        outcome = _http.post(self._url, body, headers, accepted=_api_answer)
        if not isinstance(outcome, Sent):
            return _worded(outcome)
        if notification.event == "test":
            return Sent(outcome.detail)  # a test belongs to no alert: nothing to thread
        root = parent or outcome.thread.get("ts")
        thread = {"ts": root, "channel": str(self.channel)} if root else {}
        return Sent(outcome.detail, thread)


def _path(url: str) -> str:
    """The webhook URL's path and query, its secret part: a proxy's "Cannot POST /services/..."
    shows it without the host. "" when it is too short to tell from ordinary text."""
    try:
        path = urllib.parse.urlsplit(url)._replace(scheme="", netloc="").geturl()
    except ValueError:  # e.g. an unclosed IPv6 bracket: the whole URL is all there is
        return ""
    return path if len(path) >= MIN_SECRET else ""


def _parent(notification: Notification, channel: str | None) -> str | None:
    """The ts of the message that opened the alert's thread in this channel, if any."""
    ts = notification.thread.get("ts")
    if not ts or notification.event == "test":
        return None
    return ts if notification.thread.get("channel", channel) == channel else None


def _webhook_answer(status: int, text: str) -> Outcome | None:
    """An incoming webhook that took a message answers "ok"; another 2xx (a proxy's sign-in
    page) means Slack never saw it: tried again, not taken for delivered."""
    if text.strip() == "ok":
        return None
    return Retry(f"HTTP {status}, but not Slack's answer: {_http.shown(text)}")


def _api_answer(status: int, text: str) -> Outcome | None:
    """Slack's Web API says whether it took a message in the body of a 200."""
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return Refused(f"HTTP {status}: not a Slack Web API answer")
    if answer.get("ok") is True:
        ts = str(answer.get("ts") or "")
        return Sent(f"HTTP {status}: ok, ts {ts}", {"ts": ts} if ts else {})
    error = str(answer.get("error") or "unknown error")
    if error in TRANSIENT_ERRORS:
        return Retry(f"HTTP {status}: {error}")
    return Refused(f"HTTP {status}: {error}")


def _worded(outcome: Retry | Refused) -> Outcome:
    """A Web API answer other than 200 (a 429, a 5xx) with Slack's error word, not its JSON."""
    head, _, text = outcome.detail.partition(": ")
    try:
        answer = json.loads(text)
    except ValueError:
        return outcome
    error = answer.get("error") if isinstance(answer, dict) else None
    if not error:
        return outcome
    detail = f"{head}: {error}"
    return Retry(detail, outcome.after) if isinstance(outcome, Retry) else Refused(detail)


def message(notification: Notification) -> dict[str, Any]:
    """The Block Kit message and its plain-text fallback, within Slack's limits."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _header(notification)}},
    ]
    names = [
        ("Workflow", notification.workflow),
        ("Rule", notification.rule),
        ("Severity", notification.severity),
    ]
    shown = [(name, _value(value)) for name, value in notification.figures.items()]
    fields = [_field(name, value) for name, value in (names + shown)[:MAX_FIELDS]]
    blocks.append(
        {"type": "section", "text": _mrkdwn(_body(notification), MAX_SECTION), "fields": fields}
    )
    rest = shown[MAX_FIELDS - len(names) :]
    if rest:
        lines = "\n".join(_line(name, value) for name, value in rest)
        blocks.append({"type": "section", "text": _mrkdwn(lines, MAX_SECTION)})
    blocks.append({"type": "context", "elements": [_mrkdwn(_times(notification), MAX_CONTEXT)]})
    return {
        "text": _fallback(notification),
        "blocks": blocks,
        "unfurl_links": False,
        "unfurl_media": False,
    }


def _header(notification: Notification) -> str:
    state = STATES[notification.event]
    if notification.event == "test":
        return _cut(f"{ICONS['test']} {state}: smallops alerts reach this channel", MAX_HEADER)
    if notification.escalated:
        state += " (escalated)"
    elif notification.repeat:
        state += f" (reminder {notification.repeat})"
    title = f"{ICONS[notification.event]} {state}: {notification.rule} on {notification.workflow}"
    return _cut(title, MAX_HEADER)


def _body(notification: Notification) -> str:
    """The section's text, escaped: the summary, then the link (never cut in half)."""
    if notification.event == "test":
        summary = "A test from `smallops alerts test`: nothing is wrong."
    else:
        summary = notification.summary or f"{notification.rule} on {notification.workflow}"
    link = f"\n<{_escape(_link(notification.link))}|Open in smallops>" if notification.link else ""
    return _cut_escaped(_escape(summary), MAX_SECTION - len(link)) + link


def _times(notification: Notification) -> str:
    """The context line, escaped: when, and which firing this is about."""
    key = "key `" + _escape(notification.dedup_key.replace("`", "'")) + "`"
    fired = _date(notification.fired_at)
    if notification.event == "test":
        return f"Sent {_date(notification.at)} by `smallops alerts test`"
    if notification.event == "firing":
        parts = [f"Fired {fired}"]
        if notification.repeat:
            parts.append(f"sent again {_date(notification.at)}")
        if notification.escalated:
            parts.append("escalated: nobody acknowledged it")
        return " · ".join([*parts, key])
    verb = "Acknowledged" if notification.event == "acknowledged" else "Resolved"
    span = _span(notification.at, notification.fired_at)
    after = f" after {span}" if notification.event == "resolved" and span else ""
    return f"{verb} {_date(notification.at)}{after} · the alert that fired {fired} · {key}"


def _fallback(notification: Notification) -> str:
    """The same facts as plain text: what notifications and block-less clients show."""
    state = STATES[notification.event]
    if notification.event == "test":
        head = f"{state}: smallops alerts reach this channel; nothing is wrong"
    else:
        summary = notification.summary or f"{notification.rule} on {notification.workflow}"
        head = (
            f"{state}: {notification.rule} on {notification.workflow}"
            f" ({notification.severity}): {summary}"
        )
    lines = [head]
    if notification.figures:
        figures = (f"{name} {_value(value)}" for name, value in notification.figures.items())
        lines.append(f"figures: {', '.join(figures)}")
    when = f"fired {_plain_time(notification.fired_at)}"
    if notification.event in ("acknowledged", "resolved"):
        when = f"{notification.event} {_plain_time(notification.at)}; {when}"
    lines.append(f"{when}; key {notification.dedup_key}")
    link = f"\n<{_escape(_link(notification.link))}>" if notification.link else ""
    return _cut_escaped(_escape("\n".join(lines)), MAX_TEXT - len(link)) + link


def _field(name: str, value: str) -> dict[str, str]:
    text = f"*{_escape(_cut(name, MAX_FIELD_NAME))}*\n{_escape(_cut(value, MAX_FIELD_VALUE))}"
    return {"type": "mrkdwn", "text": text}


def _line(name: str, value: str) -> str:
    return f"*{_escape(_cut(name, MAX_FIELD_NAME))}*: {_escape(_cut(value, MAX_FIELD_VALUE))}"


def _mrkdwn(escaped: str, limit: int) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _cut_escaped(escaped, limit)}


def _value(value: Figure) -> str:
    """A figure as a person reads it: a few decimals, no exponent for everyday sizes."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if 1e-3 <= abs(value) < 1e15:
            return f"{value:.4f}".rstrip("0").rstrip(".")
        return f"{value:.4g}"
    return str(value)


def _date(moment: datetime) -> str:
    """A Slack date token: shown in the reader's time zone, plain UTC where it cannot be."""
    unix = int(_utc(moment).timestamp())
    return f"<!date^{unix}^{{date_short_pretty}} {{time}}|{_plain_time(moment)}>"


def _plain_time(moment: datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M UTC")


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _span(end: datetime, start: datetime) -> str:
    seconds = int((_utc(end) - _utc(start)).total_seconds())
    if seconds <= 0:
        return ""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes and not days else []
    return " ".join(parts) or f"{seconds}s"


def _link(url: str) -> str:
    """A URL that cannot end a Slack link early."""
    return url.replace("|", "%7C").replace(" ", "%20")


def _escape(text: str) -> str:
    """Slack's mrkdwn escapes: & < > (and nothing else)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cut_escaped(text: str, limit: int) -> str:
    """Escaped text cut to `limit`, never in the middle of an &amp;."""
    if len(text) <= limit:
        return text
    return re.sub(r"&[a-z]{0,3}$", "", text[: limit - 1]) + "…"
