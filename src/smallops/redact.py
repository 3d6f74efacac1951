"""Keeping secrets out of the log: API keys and bearer tokens are replaced before any write."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

REDACTED = "[REDACTED]"
_SECRET_NAMES = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
_PATTERNS = (
    r"\bsk-[A-Za-z0-9_\-*]{8,}",  # OpenAI and Anthropic keys, masked or not
    r"\b[Bb][Ee][Aa][Rr][Ee][Rr]\s+[A-Za-z0-9._~+/=\-]{8,}",
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key ids
)
_MARKERS = ("sk-", "earer", "EARER", "AKIA")  # every pattern above contains one


class Redactor:
    """Replaces known secret values (from the environment) and key-shaped strings.

    Runs on every recorded text, so the common case (nothing to hide) is a few substring
    searches rather than a regular expression.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)
        self._pattern = re.compile("|".join(_PATTERNS))

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
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if any(marker in text for marker in _MARKERS):
            text = self._pattern.sub(REDACTED, text)
        return text
