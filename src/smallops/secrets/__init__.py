"""Provider keys from a secret store: references in smallops.toml, values only in memory.

A provider names where its key lives (`api_key = "vault:secret/openai#key"`); the value is
fetched on the first call, cached, refreshed single-flight, served stale while the store is
down (up to a limit), fetched again after a 401, and registered with the redactor so that it
never reaches the log, the spool, an export, a notification or a span.
"""

from smallops.secret_refs import SecretRef
from smallops.secrets.base import Fetched, SecretStoreError, Store

__all__ = ["Fetched", "SecretRef", "SecretStoreError", "Store"]
