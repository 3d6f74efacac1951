"""The closed sets a run and a review move through, each defined once as a Literal type.

Error types have a module of their own (smallops.error_types). Everything else that a run
records or a reviewer does is one of these; mypy holds every use to the set, so a typo is a type
error rather than a row nobody can find.
"""

from __future__ import annotations

from typing import Literal, get_args

#: How a run ended (Result.status, runs.status).
RunStatus = Literal[
    "auto", "pending_review", "queued_for_human", "fallback_default", "fallback_secondary", "failed"
]
STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
#: Statuses whose output is valid (Result.ok).
ANSWERED: frozenset[RunStatus] = frozenset({"auto", "pending_review"})

#: Where a failed call's work goes (Workflow(fallback=...)).
FallbackKind = Literal["review", "raise", "default", "secondary"]
FALLBACK_KINDS: tuple[FallbackKind, ...] = get_args(FallbackKind)

#: What the review policy decided for a run (runs.review_route).
ReviewRoute = Literal[
    "required", "sampled", "sampled_out", "not_graduated", "graduated", "audit", "fallback", "none"
]
REVIEW_ROUTES: tuple[ReviewRoute, ...] = get_args(ReviewRoute)
#: Routes that put the run before a human.
REVIEWED_ROUTES: frozenset[ReviewRoute] = frozenset(
    {"required", "sampled", "not_graduated", "audit", "fallback"}
)
#: The routes `until_graduated` gives: the outputs whose served model graduation is about.
GRADUATION_ROUTES: frozenset[ReviewRoute] = frozenset({"not_graduated", "audit", "graduated"})

#: What a reviewer can do with an item, and the states an item can be in.
ReviewAction = Literal["approve", "correct", "reject", "skip"]
REVIEW_ACTIONS: tuple[ReviewAction, ...] = get_args(ReviewAction)
ReviewState = Literal["pending", "approved", "corrected", "rejected"]
REVIEW_STATES: tuple[ReviewState, ...] = get_args(ReviewState)

#: How much of a call's content the log keeps; "pruned" is what `smallops prune` leaves.
ContentMode = Literal["full", "redacted", "metadata"]
CONTENT_MODES: tuple[ContentMode, ...] = get_args(ContentMode)
PRUNED = "pruned"

#: Who made a call: the application, the eval runner, or a secondary-model fallback.
Origin = Literal["app", "eval", "fallback"]
ORIGINS: tuple[Origin, ...] = get_args(Origin)

#: Which calls a log query covers, as `smallops logs --origin` takes it: `production` (the
#: application's calls, recorded with origin "app"), `eval` (the eval runner's), or `all`.
OriginFilter = Literal["production", "eval", "all"]

#: The verdict an eval run records when the model left cases unanswered: it judged nothing.
UNJUDGED = "unjudged"

# Alerts (smallops.alerts): the rules, an alert's states, severities, channel kinds, what a
# notification says happened, and an outbox row's state.
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
