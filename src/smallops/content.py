"""How much of a call's content the log keeps: everything, everything with personal data
masked, or only the metadata (status, model, tokens, cost, latency, the output's labels).

`full` keeps the audit trail and the eval dataset whole; `redacted` suits workflows that read
customers' messages; `metadata` suits data that must not be kept at all. Secrets are removed in
every mode. The same shaping serves the writer (as runs are recorded) and `smallops prune`
(which brings old runs down to metadata).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from smallops import kinds
from smallops.errors import ConfigError
from smallops.kinds import CONTENT_MODES, ContentMode

MODES = CONTENT_MODES
PRUNED = kinds.PRUNED  # the mode of a run whose content `smallops prune` removed

# What an attempt keeps without its content: how it went, not what was said.
ATTEMPT_METADATA = (
    "n",
    "purpose",
    "started_at",
    "latency_ms",
    "status_code",
    "error_type",
    "retry_in_s",
    "model",
    "finish",
    "request_id",
    "usage",
)

_DIGITS = re.compile(r"\d\d")
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<![\d.])\d(?:[ \-]?\d){12,18}(?![\d.])")
# Phone numbers: a leading + or digit groups split by spaces, dots, dashes or parentheses; kept
# apart from dates and times (too few digits, or followed by ':') by the digit count below.
_PHONE = re.compile(
    r"(?<![\w.+])"
    r"(?:\+\d[\d \-.()]{6,}\d|\(?\d{2,4}\)?(?:[ \-.]\(?\d{2,5}\)?){2,4})"
    r"(?![\d:])"
)


def check_mode(mode: str, workflow: str) -> ContentMode:
    if mode not in CONTENT_MODES:
        raise ConfigError(
            f"workflow {workflow!r}: content={mode!r} is not a content mode",
            hint="use 'full' (the default), 'redacted' or 'metadata'",
        )
    return mode


@functools.lru_cache(maxsize=512)
def mask_personal_data(text: str) -> str:
    """Emails, IBANs, card numbers (Luhn-checked) and phone numbers replaced by their kind.

    Cached: one run holds the same text several times (inputs, messages, the raw request) and
    every run of a workflow repeats its system prompt, so each is scanned once.
    """
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    if _DIGITS.search(text) is None:  # every other kind needs several digits in a row
        return text
    text = _IBAN.sub("[iban]", text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)


def _card(match: re.Match[str]) -> str:
    digits = [int(c) for c in match.group() if c.isdigit()]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return "[card]" if total % 10 == 0 else match.group()


def _phone(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "[phone]" if 9 <= digits <= 15 else match.group()


def deep_map(value: Any, change: Callable[[str], str]) -> Any:
    """`value` (a model as its JSON form) with `change` applied to every string inside it
    (dict keys left alone)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: deep_map(item, change) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [deep_map(item, change) for item in value]
    return value


def attempt_metadata(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The attempts without their raw requests and responses."""
    return [{k: a[k] for k in ATTEMPT_METADATA if k in a} for a in attempts]
