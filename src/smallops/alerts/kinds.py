"""The closed sets of alerts, defined once: the type checker holds every use to them."""

from __future__ import annotations

from typing import Literal, get_args

RuleName = Literal[
    "cost_surprise",  # this week's cost well above the mean of the four weeks before
    "budget",  # 80% / 100% of a daily or monthly cap
    "breaker_open",  # the circuit breaker is open
    "error_spike",  # errors over a short window, by a confidence bound
    "refusal_spike",  # model refusals, likewise
    "fallback_spike",  # work sent to the fallback, likewise
    "review_backlog",  # the oldest pending item is older than the service level
    "model_mismatch",  # a model other than the pinned one answered: a silent upgrade
    "output_shift",  # the production output distribution moved (the drift report)
    "eval_regression",  # `smallops eval --ci` recorded a regression
    "log_backlog",  # records wait in the spool or the quarantine
]
RULES: tuple[RuleName, ...] = get_args(RuleName)

AlertState = Literal["pending", "firing", "acknowledged", "resolved"]
ALERT_STATES: tuple[AlertState, ...] = get_args(AlertState)
OPEN_STATES: tuple[AlertState, ...] = ("pending", "firing", "acknowledged")

Severity = Literal["critical", "error", "warning", "info"]  # PagerDuty's four
SEVERITIES: tuple[Severity, ...] = get_args(Severity)

ChannelKind = Literal["pagerduty", "slack", "webhook", "email"]
CHANNEL_KINDS: tuple[ChannelKind, ...] = get_args(ChannelKind)

#: What a notification says happened: an alert fired (or fires again: a repeat, an escalation),
#: was acknowledged, or resolved; `test` is `smallops alerts test`.
NotifyEvent = Literal["firing", "acknowledged", "resolved", "test"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = get_args(NotifyEvent)

#: An outbox row's state: waiting to be sent (again), sent, or refused by the service (a 4xx
#: other than 429, or out of attempts): recorded, never retried.
DeliveryState = Literal["pending", "sent", "failed"]
DELIVERY_STATES: tuple[DeliveryState, ...] = get_args(DeliveryState)
