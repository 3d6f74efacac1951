"""A signed alert to any HTTPS endpoint, as a Standard Webhook (webhook-id, -timestamp, -signature).

The body is `{"type": "alert.<event>", "timestamp": ..., "data": {...}}` with the alert's names,
figures and times: never prompt or output text. The webhook-id is the notification's id, the same
on every attempt, so a receiver can drop a retry it already processed; the timestamp and signature
are made at each attempt, since a receiver refuses a timestamp more than five minutes off. It is
signed as the review webhooks are (smallops.review.webhooks.sign), with a `whsec_` secret read
from the environment. Plain http is sent only to this machine: the alert would cross the network
readable by anyone on the way.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from smallops.alert_config import ChannelConfig
from smallops.alerts.channels._http import post
from smallops.alerts.model import Figure, Notification, Outcome
from smallops.errors import ConfigError
from smallops.kinds import ChannelKind
from smallops.review.webhooks import SECRET_HINT, sign

DEFAULT_SECRET_ENV = "SMALLOPS_ALERT_WEBHOOK_SECRET"
MIN_KEY_BYTES = 24  # the Standard Webhooks specification's shortest secret
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class Webhook:
    """One configured endpoint and the secret its alerts are signed with."""

    kind: ChannelKind = "webhook"

    def __init__(self, name: str, url: str, secret: str) -> None:
        self.name = name
        self.url = url
        self._secret = secret

    def __repr__(self) -> str:  # neither the URL (it may carry a token) nor the secret
        return f"Webhook(name={self.name!r})"

    def send(self, notification: Notification) -> Outcome:
        body = json.dumps(payload(notification), sort_keys=True, ensure_ascii=False)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "smallops-alerts",
            "webhook-id": notification.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, notification.id, timestamp, body),
        }
        return post(self.url, body.encode(), headers)


def build(config: ChannelConfig, env: Mapping[str, str]) -> Webhook:
    """The channel; ConfigError naming the secret's variable when it is unset or not a
    `whsec_` secret, or when the URL is plain http to another machine."""
    where = f"[alerts.channels.{config.name}]"
    url = config.options.get("url")
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"{where} needs url", hint='e.g. "https://hooks.acme.example/alerts"')
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and (parts.hostname or "") not in LOCAL_HOSTS:
        raise ConfigError(
            f"url in {where} is plain http to another machine",
            hint="use https://; plain http is only for a receiver on this machine",
        )
    variable = str(config.options.get("secret_env") or DEFAULT_SECRET_ENV)
    secret = env.get(variable, "")
    if not secret:
        raise ConfigError(
            f"{variable} is not set: the channel {config.name} signs its alerts with it",
            hint=f"{SECRET_HINT}; give the receiver the same secret",
        )
    usable = padded(secret)
    if usable is None:
        raise ConfigError(
            f"{variable} is not a whsec_ secret of at least {MIN_KEY_BYTES} bytes",
            hint=SECRET_HINT,
        )
    return Webhook(config.name, url, usable)


def padded(secret: str) -> str | None:
    """The secret with its base64 padded, or None unless it is `whsec_` and the base64 of at
    least MIN_KEY_BYTES bytes: the form Standard Webhooks receivers decode the same way (a raw
    secret would be signed as text and verified as base64, and never match)."""
    if not secret.startswith("whsec_"):
        return None
    encoded = secret.removeprefix("whsec_").strip()
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return "whsec_" + encoded if len(key) >= MIN_KEY_BYTES else None


def payload(notification: Notification) -> dict[str, Any]:
    """What the receiver is told: the event, when it happened, and the alert's figures."""
    n = notification
    return {
        "type": f"alert.{n.event}",
        "timestamp": _iso(n.at),
        "data": {
            "alert_id": n.alert_id,
            "dedup_key": n.dedup_key,
            "rule": n.rule,
            "workflow": n.workflow,
            "severity": n.severity,
            "summary": n.summary,
            "figures": {name: _json_figure(value) for name, value in n.figures.items()},
            "link": n.link,
            "fired_at": _iso(n.fired_at),
            "at": _iso(n.at),
            "repeat": n.repeat,
            "escalated": n.escalated,
        },
    }


def _iso(moment: datetime) -> str:
    """ISO 8601 in UTC; a naive time is taken to be UTC already."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def _json_figure(value: Figure) -> Figure:
    """JSON has no NaN or infinity: such a figure goes as its text ("inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
