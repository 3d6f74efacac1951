"""Keeping secrets out of the log: API keys and bearer tokens are replaced before any write.

A redactor knows three kinds of secret: the values of environment variables whose names say
they are secret (`*_KEY`, `*_TOKEN`, ...), the values of variables it is told about (a
provider's `api_key_env`, whatever it is called), and every value registered in this process
with `register` (each provider registers the key it sends, however it was configured). Key-shaped
strings (`sk-...`, `Bearer ...`, AWS key ids) are replaced whatever they belong to.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET = 8  # shorter values are not replaced: they would match ordinary text
_SECRET_NAMES = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
_PATTERNS = (
    r"\bsk-[A-Za-z0-9_\-*]{8,}",  # OpenAI and Anthropic keys, masked or not
    r"\b[Bb][Ee][Aa][Rr][Ee][Rr]\s+[A-Za-z0-9._~+/=\-]{8,}",
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key ids
)
_MARKERS = ("sk-", "earer", "EARER", "AKIA")  # every pattern above contains one
_PATTERN = re.compile("|".join(_PATTERNS))

_registered: set[str] = set()
_registered_lock = threading.Lock()
_generation = 0  # bumped on each new registration, so redactors refresh their list


def register(secret: str | None) -> None:
    """Make every redactor in this process replace `secret` from now on."""
    global _generation
    if not secret or len(secret) < MIN_SECRET or secret in _registered:
        return
    with _registered_lock:
        if secret not in _registered:
            _registered.add(secret)
            _generation += 1


class Redactor:
    """Replaces known secret values and key-shaped strings.

    Runs on every recorded text, so the common case (nothing to hide) is a few substring
    searches rather than a regular expression.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._own = {s for s in secrets if len(s) >= MIN_SECRET}
        self._generation = -1
        self._secrets: list[str] = []

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str] | None = None, names: Iterable[str] = ()
    ) -> Redactor:
        """The values of secret-looking variables, and of the variables named in `names`
        (the `api_key_env` of each configured provider, whatever it is called)."""
        env = os.environ if env is None else env
        named = set(names)
        return cls(
            value for name, value in env.items() if name in named or _SECRET_NAMES.search(name)
        )

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        if self._generation != _generation:
            self._refresh()
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if any(marker in text for marker in _MARKERS):
            text = _PATTERN.sub(REDACTED, text)
        return text

    def value(self, value: Any) -> Any:
        """`value` with every string inside it (dict keys included) redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(item) for item in value]
        return value

    def _refresh(self) -> None:
        with _registered_lock:
            generation, known = _generation, self._own | _registered
        self._secrets = sorted(known, key=len, reverse=True)
        self._generation = generation
