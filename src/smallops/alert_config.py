"""The [alerts] table of smallops.toml: channels, who gets what, and each rule's thresholds.

    [alerts]
    dashboard_url = "https://smallops.acme.example"   # links in alerts; none without it
    interval = "1m"            # between checks inside `smallops serve`
    repeat_after = "4h"        # a firing alert nobody acknowledged is sent again after this
    hold = "0s"                # seen this long before it fires (pending until then)
    min_firing = "10m"         # an alert fires at least this long before it resolves
    escalate_after = "15m"     # unacknowledged this long: sent to escalate_to as well

    [alerts.channels.ops-slack]
    kind = "slack"             # webhook_url_env = "SLACK_WEBHOOK_URL" (the URL is a secret)
    [alerts.channels.pager]
    kind = "pagerduty"         # routing_key_env = "PAGERDUTY_ROUTING_KEY"

    [alerts.owners]            # a workflow's owner -> the channels that reach them
    "ops@acme.example" = ["ops-slack"]

    [alerts.rules.cost_surprise]   # project-wide thresholds
    floor_usd = 10

    [alerts.workflows.email-triage]
    channels = ["ops-slack"]
    escalate_to = ["pager"]
    [alerts.workflows.email-triage.rules.review_backlog]
    sla = "2h"
    [alerts.rules.breaker_open]   # a rule may have channels of its own
    channels = ["pager"]

Secrets never live here: a channel names the environment variable that holds its key or URL.
Every table and key is checked, and an unknown one is refused with the closest known name. A
channel's secrets are read from the environment only when it sends (smallops.alerts.channels),
so `smallops check` and CI work without them.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from smallops.errors import ConfigError
from smallops.kinds import CHANNEL_KINDS, RULES, SEVERITIES, ChannelKind, RuleName, Severity

WHERE = "smallops.toml"
ALERTS_KEYS = (
    "dashboard_url",
    "interval",
    "repeat_after",
    "min_firing",
    "hold",
    "escalate_after",
    "escalate_to",
    "channels",
    "owners",
    "rules",
    "workflows",
)
WORKFLOW_KEYS = ("channels", "escalate_to", "rules")
#: Each rule's thresholds and their defaults; every rule also takes `enabled`, `severity` and
#: `channels` (where its alerts go, instead of the workflow's or owner's channels).
#: Durations are "30s", "15m", "4h", "7d" or seconds.
RULE_DEFAULTS: dict[RuleName, dict[str, Any]] = {
    "cost_surprise": {"severity": "warning", "increase": 0.5, "floor_usd": 5.0},
    "budget": {"severity": "warning", "near": 0.8},  # at 100% it is critical
    "breaker_open": {"severity": "critical"},
    "error_spike": {
        "severity": "error",
        "window": "1h",
        "min_calls": 20,
        "rate": 0.1,
        "confidence": 0.95,
    },
    "refusal_spike": {
        "severity": "warning",
        "window": "1h",
        "min_calls": 20,
        "rate": 0.05,
        "confidence": 0.95,
    },
    "fallback_spike": {
        "severity": "error",
        "window": "1h",
        "min_calls": 20,
        "rate": 0.2,
        "confidence": 0.95,
    },
    "review_backlog": {"severity": "warning", "sla": "4h"},
    "model_mismatch": {"severity": "warning", "window": "24h"},
    "output_shift": {"severity": "warning", "p_value": 0.001},
    "eval_regression": {"severity": "error"},
    "log_backlog": {"severity": "error"},
}
#: Each channel kind's keys besides `kind`: (name, what it must be). "env" is the name of an
#: environment variable (a secret's, never the secret), "url" an http(s) URL, "text" any text,
#: "port" a TCP port, "addresses" a list of email addresses, "security" one of SECURITY.
CHANNEL_OPTIONS: dict[ChannelKind, dict[str, str]] = {
    "pagerduty": {"routing_key_env": "env", "url": "url", "source": "text"},
    "slack": {"webhook_url_env": "env", "token_env": "env", "channel": "text", "api_url": "url"},
    "webhook": {"url": "url", "secret_env": "env"},
    "email": {
        "host": "text",
        "port": "port",
        "security": "security",
        "from": "text",
        "to": "addresses",
        "username_env": "env",
        "password_env": "env",
    },
}
#: The variables a channel reads its secret from when its table names none.
DEFAULT_SECRET_ENV: dict[ChannelKind, dict[str, str]] = {
    "pagerduty": {"routing_key_env": "PAGERDUTY_ROUTING_KEY"},
    "slack": {"webhook_url_env": "SLACK_WEBHOOK_URL"},
    "webhook": {"secret_env": "SMALLOPS_ALERT_WEBHOOK_SECRET"},
    "email": {},
}
REQUIRED_OPTIONS: dict[ChannelKind, tuple[str, ...]] = {
    "pagerduty": (),
    "slack": (),
    "webhook": ("url",),
    "email": ("host", "from"),
}
MAX_CHANNEL_NAME = 100  # alert_notifications.channel holds this many characters
SECURITY = ("starttls", "tls", "none")  # "none" only to a server on this machine
DURATION_KEYS = frozenset({"window", "sla"})
FRACTION_KEYS = frozenset({"increase", "near", "rate", "confidence", "p_value"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 3650 * 86400  # ten years, in seconds: longer ones overflow a date


@dataclass(frozen=True)
class ChannelConfig:
    """A named channel: its kind, and the rest of its table, checked by its kind's module."""

    name: str
    kind: ChannelKind
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """Who hears about a workflow's alerts: `first` at once, `then` if nobody acknowledges
    within `escalate_after`; `recipients` are the addresses an email channel without its own
    `to` writes to (the owner, when the owner is an address)."""

    first: tuple[str, ...]
    then: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkflowAlerts:
    channels: tuple[str, ...] | None = None
    escalate_to: tuple[str, ...] | None = None
    rules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertSettings:
    """The [alerts] table, checked; durations in seconds."""

    channels: Mapping[str, ChannelConfig] = field(default_factory=dict)
    owners: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    workflows: Mapping[str, WorkflowAlerts] = field(default_factory=dict)
    dashboard_url: str | None = None
    interval: float = 60.0
    repeat_after: float = 4 * 3600.0
    min_firing: float = 600.0
    hold: float = 0.0  # seconds a condition must last before its alert fires (pending before)
    escalate_after: float = 900.0
    escalate_to: tuple[str, ...] = ()

    def rule(self, rule: RuleName, workflow: str) -> dict[str, Any]:
        """The rule's thresholds for a workflow: its defaults, the project's, the workflow's;
        durations in seconds."""
        merged = {"enabled": True, **RULE_DEFAULTS[rule], **self.rules.get(rule, {})}
        known = self.workflows.get(workflow)
        if known is not None:
            merged.update(known.rules.get(rule, {}))
        return {
            key: duration(value, f"{rule}.{key}") if key in DURATION_KEYS else value
            for key, value in merged.items()
        }

    def severity(self, rule: RuleName, workflow: str) -> Severity:
        return cast(Severity, self.rule(rule, workflow)["severity"])

    def route(self, workflow: str, owner: str | None, rule: RuleName | None = None) -> Route:
        """The rule's own channels (for this workflow, or the project's), else the workflow's,
        else its owner's, else (an owner that is an email address) every email channel,
        written to the owner."""
        known = self.workflows.get(workflow) or WorkflowAlerts()
        then = known.escalate_to if known.escalate_to is not None else self.escalate_to
        recipients = (owner,) if owner and is_address(owner) else ()
        if rule is not None and "channels" in self.rule(rule, workflow):
            return Route(tuple(self.rule(rule, workflow)["channels"]), then, recipients)
        if known.channels is not None:
            return Route(known.channels, then, recipients)
        if owner and owner in self.owners:
            return Route(self.owners[owner], then, recipients)
        if recipients:
            mail = tuple(name for name, c in self.channels.items() if c.kind == "email")
            return Route(mail, then, recipients)
        return Route((), then, recipients)


def is_address(text: str) -> bool:
    return bool(re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", text))


def duration(value: Any, where: str, table: str = "[alerts]") -> float:
    """Seconds from "30s", "15m", "4h", "7d" or a number of seconds (more than 0, and at most
    MAX_DURATION: a time that far ahead is past the calendar's end)."""
    seconds = float("nan")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(
            f"{where} in {table} of {WHERE} is {value!r}, not a duration",
            hint='use e.g. "30s", "15m", "4h", "7d" or a number of seconds',
        )
    if seconds > MAX_DURATION:
        raise ConfigError(
            f"{where} in {table} of {WHERE} is {value!r}, longer than {MAX_DURATION // 86400} days",
            hint=f'use at most "{MAX_DURATION // 86400}d" (for "never", that is long enough)',
        )
    return seconds


def parse_alerts(table: Mapping[str, Any]) -> AlertSettings:
    """The [alerts] table, checked: ConfigError naming the first thing wrong."""
    _check_keys(table, ALERTS_KEYS, "[alerts]")
    channels = _channels(_subtable(table, "channels", "[alerts.channels]"))
    owners = {
        str(owner): _names(names, f'[alerts.owners] "{owner}"', channels)
        for owner, names in _subtable(table, "owners", "[alerts.owners]").items()
    }
    rules = _rules(_subtable(table, "rules", "[alerts.rules]"), "alerts.rules", channels)
    workflows = {}
    for name, spec in _subtable(table, "workflows", "[alerts.workflows]").items():
        where = f"[alerts.workflows.{name}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} in {WHERE} must be a table")
        _check_keys(spec, WORKFLOW_KEYS, where)
        workflows[str(name)] = WorkflowAlerts(
            channels=_names(spec["channels"], f"{where} channels", channels)
            if "channels" in spec
            else None,
            escalate_to=_names(spec["escalate_to"], f"{where} escalate_to", channels)
            if "escalate_to" in spec
            else None,
            rules=_rules(
                _subtable(spec, "rules", f"{where[:-1]}.rules]"),
                f"alerts.workflows.{name}.rules",
                channels,
            ),
        )
    dashboard_url = table.get("dashboard_url")
    if dashboard_url is not None and not (
        isinstance(dashboard_url, str) and re.match(r"^https?://[^/\s]+", dashboard_url)
    ):
        raise ConfigError(
            f"dashboard_url in [alerts] of {WHERE} must be an http:// or https:// URL",
            hint='the address reviewers open `smallops serve` at, e.g. "https://ops.acme.example"',
        )
    return AlertSettings(
        channels=channels,
        owners=owners,
        rules=rules,
        workflows=workflows,
        dashboard_url=dashboard_url.rstrip("/") if dashboard_url else None,
        interval=duration(table.get("interval", 60), "interval"),
        repeat_after=duration(table.get("repeat_after", "4h"), "repeat_after"),
        min_firing=duration(table.get("min_firing", "10m"), "min_firing"),
        hold=_hold(table.get("hold", 0)),
        escalate_after=duration(table.get("escalate_after", "15m"), "escalate_after"),
        escalate_to=_names(table.get("escalate_to", []), "[alerts] escalate_to", channels),
    )


def _hold(value: Any) -> float:
    """The hold may be 0 (fire at once, the default); otherwise a duration."""
    return 0.0 if value in (0, "0", "0s") else duration(value, "hold")


def _channels(table: Mapping[str, Any]) -> dict[str, ChannelConfig]:
    channels = {}
    for name, spec in table.items():
        _check_channel_name(name)
        where = f"[alerts.channels.{name}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} in {WHERE} must be a table")
        kind = spec.get("kind")
        if kind not in CHANNEL_KINDS:
            raise ConfigError(
                f"{where} in {WHERE} has kind {kind!r}",
                hint=f"kind is one of: {', '.join(CHANNEL_KINDS)}",
            )
        options = {key: value for key, value in spec.items() if key != "kind"}
        config = ChannelConfig(str(name), cast(ChannelKind, kind), options)
        _check_channel(config, where)
        channels[str(name)] = config
    return channels


def _check_channel_name(name: str) -> None:
    """A name each outbox row can hold (alert_notifications.channel) and a log line can show."""
    if len(name) > MAX_CHANNEL_NAME or not name.isprintable() or not name.strip():
        raise ConfigError(
            f"the channel name {name[:MAX_CHANNEL_NAME]!r} in [alerts.channels] of {WHERE} is"
            + (" too long" if len(name) > MAX_CHANNEL_NAME else " not one line of text"),
            hint=f'a short name, at most {MAX_CHANNEL_NAME} characters, e.g. "ops-slack"',
        )


def _check_channel(config: ChannelConfig, where: str) -> None:
    """ConfigError for a channel table its kind cannot use."""
    known = CHANNEL_OPTIONS[config.kind]
    _check_keys(config.options, ("kind", *known), where)
    for key in REQUIRED_OPTIONS[config.kind]:
        if key not in config.options:
            hint = _FROM_HINT if key == "from" else _OPTION_HINTS[known[key]]
            raise ConfigError(f"{where} in {WHERE} needs {key}", hint=hint)
    for key, value in config.options.items():
        if not _fits(known[key], value):
            raise ConfigError(
                f"{key} in {where} of {WHERE} is not {_OPTION_WHAT[known[key]]}",
                hint=_OPTION_HINTS[known[key]],
            )
    if config.kind == "slack" and ("token_env" in config.options) != ("channel" in config.options):
        raise ConfigError(
            f"{where} in {WHERE} needs token_env and channel together",
            hint="a bot token and a channel post with the Web API (and thread the resolution);"
            " without them the channel posts to an incoming webhook (webhook_url_env)",
        )


_FROM_HINT = 'the sender, e.g. "smallops <alerts@acme.example>"'
_OPTION_WHAT = {
    "env": "the name of an environment variable",
    "url": "an http:// or https:// URL",
    "text": "one line of text",
    "port": "a TCP port",
    "addresses": "a list of email addresses",
    "security": f"one of {', '.join(SECURITY)}",
}
_OPTION_HINTS = {
    "env": 'name the variable that holds the secret, e.g. "PAGERDUTY_ROUTING_KEY"; never the '
    "secret itself",
    "url": 'e.g. "https://hooks.acme.example/alerts"',
    "text": 'e.g. "smtp.acme.example"',
    "port": "e.g. 587 (STARTTLS) or 465 (TLS)",
    "addresses": 'e.g. ["ops@acme.example"]',
    "security": '"starttls" (port 587), "tls" (465), or "none" for a relay on this machine',
}


def _fits(what: str, value: Any) -> bool:
    if what == "env":
        return (
            isinstance(value, str)
            and bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value))
            and not _looks_like_a_secret(value)
        )
    if what == "url":
        return isinstance(value, str) and bool(re.match(r"^https?://[^/\s]+", value))
    if what == "text":  # one line: a From or a host with a line break would inject headers
        return isinstance(value, str) and bool(value.strip()) and value.isprintable()
    if what == "port":
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
    if what == "addresses":
        return (
            isinstance(value, list)
            and bool(value)
            and all(isinstance(v, str) and is_address(v) for v in value)
        )
    return value in SECURITY


def _looks_like_a_secret(name: str) -> bool:
    """A long "name" with no underscore that is not in capitals is a key pasted where its
    variable's name goes (a PagerDuty routing key is 32 letters and digits): refused, or every
    "$<it> is not set" would carry it into the outbox, the terminal and the log."""
    return len(name) >= 20 and "_" not in name and not name.isupper()


def _names(value: Any, where: str, channels: Mapping[str, ChannelConfig]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} in {WHERE} must be a list of channel names")
    for name in value:
        if name not in channels:
            raise ConfigError(
                f"{where} in {WHERE} names channel {name!r}, which [alerts.channels] lacks",
                hint=_known(name, tuple(channels), "channels")
                if channels
                else f"define it: [alerts.channels.{name}] with a kind",
            )
    return tuple(value)


def _rules(
    table: Mapping[str, Any], where: str, channels: Mapping[str, ChannelConfig]
) -> dict[str, dict[str, Any]]:
    """Rule tables under `where` (a dotted table name, e.g. "alerts.rules"); a rule's
    `channels` must name channels of [alerts.channels]."""
    rules: dict[str, dict[str, Any]] = {}
    for rule, spec in table.items():
        if rule not in RULES:
            raise ConfigError(
                f"[{where}] in {WHERE} has an unknown rule {rule!r}",
                hint=_known(rule, RULES, "rules"),
            )
        here = f"[{where}.{rule}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{here} in {WHERE} must be a table")
        _check_keys(spec, ("enabled", "channels", *RULE_DEFAULTS[rule]), here)
        for key, value in spec.items():
            if key == "channels":
                spec = {**spec, "channels": _names(value, f"{here} channels", channels)}
            else:
                _check_value(key, value, here)
        rules[rule] = dict(spec)
    return rules


def _check_value(key: str, value: Any, where: str) -> None:
    shown = f"{key} in {where} of {WHERE}"
    if key == "enabled":
        if not isinstance(value, bool):
            raise ConfigError(f"{shown} must be true or false")
    elif key == "severity":
        if value not in SEVERITIES:
            raise ConfigError(f"{shown} is {value!r}", hint=f"use one of: {', '.join(SEVERITIES)}")
    elif key in DURATION_KEYS:
        duration(value, key, where)
    elif key == "min_calls":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{shown} must be a whole number of calls, 1 or more")
    else:
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        ok = number is not None and math.isfinite(number) and number >= 0
        if ok and key in FRACTION_KEYS and key != "increase":
            ok = 0 < float(cast(float, number)) < 1
        if not ok:
            wanted = "a fraction between 0 and 1" if key in FRACTION_KEYS else "a number, 0 or more"
            if key == "increase":
                wanted = "a fraction, 0 or more (0.5 is +50%)"
            raise ConfigError(f"{shown} is {value!r}", hint=f"use {wanted}")


def _subtable(table: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where} in {WHERE} must be a table")
    return value


def _check_keys(table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{where} in {WHERE} has an unknown key {key!r}", hint=_known(key, known, "keys")
            )


def _known(given: str, known: tuple[str, ...], what: str) -> str:
    close = difflib.get_close_matches(given, known, n=1)
    every = f"known {what}: {', '.join(known)}"
    return f"did you mean {close[0]}? ({every})" if close else every
