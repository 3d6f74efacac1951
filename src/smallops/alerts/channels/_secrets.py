"""A secret blotted out of what a service answered, before the answer is kept anywhere.

A channel's service has no reason to echo a routing key, a token or a webhook URL, but a proxy
or a broken service might; the detail goes to the outbox row, the log and the terminal.
"""

from __future__ import annotations

from smallops.alerts.model import Outcome, Refused, Retry, Sent

MIN_SHOWN = 8  # a detail that ends in this much of a secret's head ends in part of the secret


def scrubbed(outcome: Outcome, secret: str, label: str) -> Outcome:
    """The outcome with every copy of `secret` replaced by `[label]`, and its head too where the
    detail was cut short in the middle of it."""
    detail = outcome.detail.replace(secret, f"[{label}]") if secret else outcome.detail
    for length in range(len(secret) - 1, MIN_SHOWN - 1, -1):
        if detail.endswith(secret[:length]):
            detail = f"{detail[:-length]}[{label}]"
            break
    if detail == outcome.detail:
        return outcome
    if isinstance(outcome, Sent):
        return Sent(detail, outcome.thread)
    if isinstance(outcome, Retry):
        return Retry(detail, outcome.after)
    return Refused(detail)
