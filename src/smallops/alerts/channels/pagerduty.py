"""PagerDuty, through the Events API v2: an alert opens an incident, its acknowledgement and
resolution move that incident, all by the alert's dedup key.

    [alerts.channels.pager]
    kind = "pagerduty"
    routing_key_env = "PAGERDUTY_ROUTING_KEY"   # the default; the key itself is a secret
    # url = "https://events.pagerduty.com/v2/enqueue"
    # source = "smallops"

PagerDuty answers 202 when it took an event, 400 (with its reasons) when it never will, 429 and
5xx when it may later. The routing key is in every request body and in nothing else: not in a
detail, an error or the channel's repr.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from smallops.alert_config import ChannelConfig
from smallops.alerts.channels import _http
from smallops.alerts.channels._secrets import scrubbed
from smallops.alerts.model import Figure, Notification, Outcome, Refused, Retry, Sent
from smallops.errors import ConfigError
from smallops.kinds import ChannelKind, NotifyEvent

DEFAULT_KEY_ENV = "PAGERDUTY_ROUTING_KEY"
DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
DEFAULT_SOURCE = "smallops"
MAX_DEDUP_KEY = 255  # PagerDuty's limits
MAX_SUMMARY = 1024
MAX_BODY = 512 * 1024
MAX_TEXT_FIGURE = 1024  # characters of a text figure kept in custom_details

#: What custom_details says of the alert itself, besides its figures.
ALERT_DETAILS = ("fired_at", "repeat", "escalated", "link")
ACTIONS: dict[NotifyEvent, str] = {
    "firing": "trigger",
    "acknowledged": "acknowledge",
    "resolved": "resolve",
    "test": "trigger",
}


def build(config: ChannelConfig, env: Mapping[str, str]) -> PagerDuty:
    """The channel, its routing key read from the variable `routing_key_env` names."""
    variable = str(config.options.get("routing_key_env", DEFAULT_KEY_ENV))
    key = env.get(variable, "").strip()
    if not key:
        raise ConfigError(
            f"channel {config.name!r} (pagerduty) needs the routing key in ${variable},"
            " which is not set",
            hint=f"set {variable} to the Integration Key of an Events API v2 integration"
            " (the service's Integrations tab), or name another variable in routing_key_env",
        )
    return PagerDuty(
        config.name,
        key,
        url=str(config.options.get("url", DEFAULT_URL)),
        source=str(config.options.get("source", DEFAULT_SOURCE)),
    )


class PagerDuty:
    """One PagerDuty service (its routing key); `send` makes one attempt per event."""

    kind: ChannelKind = "pagerduty"

    def __init__(self, name: str, routing_key: str, *, url: str, source: str) -> None:
        self.name = name
        self.url = url
        self.source = source
        self._routing_key = routing_key

    def __repr__(self) -> str:
        return f"PagerDuty(name={self.name!r}, source={self.source!r})"

    def send(self, notification: Notification) -> Outcome:
        if notification.event == "test":
            return self._test(notification)
        return self._post(event(notification, self._routing_key, self.source))

    def _test(self, notification: Notification) -> Outcome:
        """A trigger under a key of its own, resolved at once: the route is proven and nobody
        is left with an open incident. The key is the same across retries, so a retry after a
        trigger that went through dedups into the incident it opened, then resolves it."""
        key = dedup_key(f"smallops:test:{notification.id}")
        trigger = self._post(event(notification, self._routing_key, self.source, key=key))
        if not isinstance(trigger, Sent):
            return trigger
        resolve = self._post(
            {"routing_key": self._routing_key, "event_action": "resolve", "dedup_key": key}
        )
        detail = f"trigger: {trigger.detail}; resolve: {resolve.detail}"
        if isinstance(resolve, Retry):
            return Retry(detail, resolve.after)
        if isinstance(resolve, Refused):
            return Refused(f"{detail} (the test incident {key} is open: resolve it by hand)")
        return Sent(detail)

    def _post(self, body: dict[str, Any]) -> Outcome:
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        if len(raw) > MAX_BODY and "payload" in body:  # PagerDuty's limit: keep all but figures
            details = body["payload"]["custom_details"]
            kept = {name: details[name] for name in ALERT_DETAILS}
            body["payload"]["custom_details"] = {**kept, "figures": "left out: over 512 KB"}
            raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        outcome = _http.post(
            self.url, raw, {"Content-Type": "application/json"}, accepted=_accepted
        )
        return scrubbed(_explained(outcome), self._routing_key, "routing key")


def event(
    notification: Notification, routing_key: str, source: str, *, key: str | None = None
) -> dict[str, Any]:
    """The Events v2 body for a notification; `key` overrides its dedup key (a test's)."""
    action = ACTIONS[notification.event]
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": key or dedup_key(notification.dedup_key),
    }
    if action != "trigger":
        return body
    test = notification.event == "test"
    if test:
        summary = (
            "smallops test alert (smallops alerts test): nothing is wrong; it resolves at once"
        )
    else:
        summary = notification.summary or f"{notification.rule} on {notification.workflow}"
        if notification.escalated:
            summary = f"[escalated] {summary}"
    details: dict[str, Any] = {name: _figure(value) for name, value in notification.figures.items()}
    details.update(
        fired_at=_iso(notification.fired_at),
        repeat=notification.repeat,
        escalated=notification.escalated,
        link=notification.link,
    )
    body["payload"] = {
        "summary": _cut(summary, MAX_SUMMARY),
        "source": source,
        "severity": "info" if test else notification.severity,
        "timestamp": _iso(notification.at),
        "component": notification.workflow,
        "group": "smallops",
        "class": notification.rule,
        "custom_details": details,
    }
    body["client"] = "smallops"
    if notification.link:
        body["client_url"] = notification.link
        body["links"] = [{"href": notification.link, "text": "Open in smallops"}]
    return body


def dedup_key(key: str) -> str:
    """`key` if PagerDuty takes it (255 characters), else its head and a hash of the whole: the
    same alert always gets the same key, and two long keys that share a head stay apart."""
    if len(key) <= MAX_DEDUP_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{key[: MAX_DEDUP_KEY - len(digest) - 1]}~{digest}"


def _accepted(status: int, text: str) -> Outcome | None:
    """A 2xx with PagerDuty's own words ("Event processed") as the detail. PagerDuty always
    answers JSON: another 2xx (a proxy's sign-in page) means it never saw the event."""
    answer = _json(text)
    if answer is None:
        return Retry(f"HTTP {status}, but not PagerDuty's answer: {_http.shown(text)}")
    words = ": ".join(str(answer[k]) for k in ("status", "message") if answer.get(k))
    return Sent(f"HTTP {status}: {words}".rstrip(": "))


def _explained(outcome: Outcome) -> Outcome:
    """A refusal's detail as PagerDuty's message and reasons rather than the raw JSON."""
    if not isinstance(outcome, Refused) or ": " not in outcome.detail:
        return outcome
    head, text = outcome.detail.split(": ", 1)
    answer = _json(text)
    if answer is None:
        return outcome
    words = str(answer.get("message") or answer.get("status") or "")
    errors = answer.get("errors")
    if isinstance(errors, list) and errors:
        words = f"{words} ({'; '.join(map(str, errors))})".strip()
    return Refused(f"{head}: {words}".rstrip(": ")) if words else outcome


def _json(text: str) -> dict[str, Any] | None:
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _figure(value: Figure) -> Figure:
    """A figure JSON can carry: NaN and infinities as text, long text cut."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return _cut(value, MAX_TEXT_FIGURE)
    return value


def _iso(moment: datetime) -> str:
    """ISO 8601 in UTC; a naive time is taken to be UTC already."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
