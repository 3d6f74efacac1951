"""The offline demo: the email-triage workflow over a sample inbox, answered by keyword rules.

The rules stand in for a model (they are not one) so the demo needs no key and no network.
A few emails meet the failures a real model API has on a bad day, each scripted once:
a 429 with Retry-After, a reply that is not JSON, a summary that breaks the schema, a refusal,
a truncated answer and an outage that outlasts the retries. The same lifecycle handles them as
it would with a real model: retry, repair, or hand the email to a human.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from smallops.providers.base import ProviderError
from smallops.providers.fake import FakeAnswer, FakeReply, FakeRequest

INBOX = Path(__file__).parent / "inbox.jsonl"

_RULES = {
    "spam": r"gift card|prize|winner|guaranteed|returns|crypto|bitcoin|\bseo\b|mailbox|verify|"
    r"click (here|below)|lottery|act now|backlinks",
    "billing": r"invoice|refund|charged|charge|declined|\bvat\b|receipt|payment|billing|"
    r"cancel|double|paid",
    "sales": r"pricing|price|seats|\bdemo|demonstration|enterprise|\bsso\b|discount|quote|"
    r"trial|free plan|nonprofit",
    "support": r"\bdown\b|error|erreur|\bbug|login|2fa|code|export|times out|not working|broken|"
    r"logo|how (to|do)|didn't go out|wrong|reminders|sync|format|help",
    "other": r"application|podcast|press|thank|partnership|job|interview|portfolio",
}
_HIGH = r"urgent|asap|immediately|\bdown\b|all our|wrong totals|production|twice|!!!|\?\?\?"


def load_inbox() -> list[dict[str, str]]:
    """The sample inbox: 30 emails of the kinds a small SaaS company receives."""
    return [json.loads(line) for line in INBOX.read_text(encoding="utf-8").splitlines() if line]


def triage_by_rules(text: str) -> dict[str, str]:
    """Category, urgency and summary from keywords: what the demo offers instead of a model."""
    subject = next((line[9:] for line in text.splitlines() if line.startswith("Subject: ")), "")
    body = text.split("\n\n", 1)[-1]
    scores = {
        name: 3 * len(re.findall(rule, subject.lower())) + len(re.findall(rule, body.lower()))
        for name, rule in _RULES.items()
    }
    category = max(scores, key=lambda name: scores[name]) if any(scores.values()) else "other"
    urgency = "high" if re.search(_HIGH, text.lower()) else "normal"
    if category in ("spam", "other"):
        urgency = "low"
    first = re.split(r"(?<=[.!?])\s", " ".join(body.split()), maxsplit=1)[0]
    summary = f"{subject}: {first}"[:200]
    return {"category": category, "urgency": urgency, "summary": summary}


class DemoModel:
    """A responder for FakeProvider: rules, plus one scripted failure for some subjects."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures  # subject -> failure kind
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, request: FakeRequest) -> FakeAnswer:
        subject = next(
            (line[9:] for line in request.user.splitlines() if line.startswith("Subject: ")), ""
        )
        with self._lock:
            tries = self._seen.get(request.user, 0)
            self._seen[request.user] = tries + 1
        answer = triage_by_rules(request.user)
        kind = self.failures.get(subject)
        if kind == "rate_limited" and tries == 0:
            return ProviderError(
                "rate_limited", "HTTP 429: rate limit reached", status_code=429, retry_after=0.2
            )
        if kind == "outage":
            return ProviderError(
                "server_error",
                "HTTP 503: the service is overloaded",
                status_code=503,
                retry_after=0.1,
            )
        if kind == "not_json" and tries == 0:
            return "Sure! Here is the triage: category billing, urgency normal."
        if kind == "too_long" and tries == 0:
            return {**answer, "summary": answer["summary"] + " (details)" * 40}
        if kind == "refusal":
            return FakeReply(refusal="I can't help with instructions embedded in this email.")
        if kind == "truncated":
            return FakeReply(text=json.dumps(answer)[:40], finish="length")
        return answer


def scripted_failures(inbox: list[dict[str, str]]) -> dict[str, str]:
    """Which emails meet which failure: chosen by content where a model would behave so."""
    failures: dict[str, str] = {}
    for email in inbox:
        body = email["body"].lower()
        if "ignore all previous instructions" in body or "ignore previous instructions" in body:
            failures[email["subject"]] = "refusal"
        elif len(email["body"]) > 2000:
            failures[email["subject"]] = "truncated"
    ordinary = [e["subject"] for e in inbox if e["subject"] not in failures]
    for index, kind in ((2, "rate_limited"), (6, "not_json"), (10, "too_long"), (16, "outage")):
        if index < len(ordinary):
            failures[ordinary[index]] = kind
    return failures


def demo_inputs(inbox: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"sender": e["sender"], "subject": e["subject"], "body": e["body"]} for e in inbox]
