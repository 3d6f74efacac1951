"""A provider's key: where it lives, and how to get it now, fetch it, or fetch it again.

`env:` keys are read from the environment on every request (it costs nothing, and a changed
variable is used at once); keys in a store come from the process-wide cache. Nothing is
fetched until a request needs it, so defining a workflow, `smallops check` and CI need no
credentials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from smallops.config import SecretSettings
from smallops.errors import ConfigError, KeyUnavailableError
from smallops.redact import register
from smallops.secret_refs import SecretRef
from smallops.secrets.base import Fetched, SecretStoreError
from smallops.secrets.cache import cache

#: What a keyless server (a local Ollama) is sent: the SDKs insist on some key.
PLACEHOLDER = "unused"


@dataclass(frozen=True)
class KeySource:
    """One provider's key: its reference, the caching policy, and its project's folder.

    `keyless`: the server needs no key, so an unset `env:` variable means the placeholder.
    """

    ref: SecretRef
    policy: SecretSettings = field(default_factory=SecretSettings)
    provider: str = "openai"  # whose key, for messages
    keyless: bool = False
    root: Path | None = None  # the project: where status reads of it, and a command runs

    def cached(self) -> str | None:
        """The key if it is at hand without waiting (an env variable, a fresh cached key);
        None when it must be fetched first (`get`). Never blocks."""
        if self.ref.scheme == "env":
            return self._env()
        return cache.peek(self.ref, self.policy, self.root)

    def get(self) -> str:
        """The key, fetched if need be (blocking up to fetch_timeout); SecretStoreError when
        none can be had."""
        return self.fetch().value

    def fetch(self) -> Fetched:
        """`get`, with what the store says of the key (its version, when it changed)."""
        if self.ref.scheme == "env":
            key = self._env()
            if key is None:
                raise SecretStoreError(f"{self.ref.path} is not set", hint=self._env_hint())
            return Fetched(key)
        return cache.get(self.ref, self.policy, self.root)

    def refetch(self, rejected: str) -> str | None:
        """After the provider refused `rejected` (a 401): the key fetched again if it changed,
        else None (the refusal stands); SecretStoreError when the store gave none."""
        if self.ref.scheme == "env":
            key = self._env()
            return key if key is not None and key != rejected else None
        fetched = cache.refetch(self.ref, rejected, self.policy, self.root)
        return fetched.value if fetched is not None else None

    def check(self) -> None:
        """What `smallops run`, `eval` and `drift` check before calling the model for a batch:
        that the key can be had (fetching it, so the batch's calls find it cached). A key that
        is not set, not found or not allowed is a ConfigError, a store that does not answer a
        KeyUnavailableError: better one line now than every call of the batch in the review
        queue. (Defining a workflow, or `smallops check`, fetches nothing.)"""
        try:
            self.fetch()
        except SecretStoreError as exc:
            error = KeyUnavailableError if exc.unreachable else ConfigError
            message = f"no key for provider '{self.provider}': {exc.message}"
            raise error(message, hint=exc.hint) from None

    def _env(self) -> str | None:
        key = os.environ.get(self.ref.path)
        if key:
            register(key)  # whatever the variable is called, the key is redacted everywhere
            return key
        return PLACEHOLDER if self.keyless else None

    def _env_hint(self) -> str:
        return (
            f"export {self.ref.path}=... (or set api_key for provider '{self.provider}' in "
            'smallops.toml, e.g. api_key = "aws-sm:prod/openai#api_key")'
        )
