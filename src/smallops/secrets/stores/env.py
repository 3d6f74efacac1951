"""`env:NAME`: the key in an environment variable, as the SDKs read it (the default)."""

from __future__ import annotations

import os

from smallops.secret_refs import SecretRef
from smallops.secrets.base import Fetched, SecretStoreError


class EnvStore:
    def fetch(self, ref: SecretRef) -> Fetched:
        value = os.environ.get(ref.path)
        if not value:
            raise SecretStoreError(
                f"{ref.path} is not set", hint=f"export {ref.path}=... before starting"
            )
        return Fetched(value)
