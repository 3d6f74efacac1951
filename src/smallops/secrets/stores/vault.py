"""`vault:MOUNT/PATH#FIELD`: a field of a HashiCorp Vault KV v2 secret, read through hvac.

The mount is the path's first segment (`vault:secret/team/openai#api_key` reads `team/openai`
at the `secret` mount). Without a field, a secret holding exactly one key gives that key.

Environment: VAULT_ADDR (default http://127.0.0.1:8200), VAULT_NAMESPACE (Enterprise/HCP),
and either an AppRole (VAULT_ROLE_ID + VAULT_SECRET_ID, logged in at VAULT_APPROLE_MOUNT,
default "approle") or a token (VAULT_TOKEN, else ~/.vault-token as the vault CLI leaves it).
VAULT_CACERT / VAULT_CAPATH / VAULT_CLIENT_CERT are read by hvac itself.

An AppRole token expires while the process lives on, so the store logs in again when the
token's lease has run out, or when Vault answers 403 (which is how Vault says the token is no
longer valid), then reads once more. A plain VAULT_TOKEN cannot be renewed that way: a 403
then is a refusal.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from smallops.errors import MissingExtraError
from smallops.secret_refs import SecretRef
from smallops.secrets.base import Fetched, SecretStoreError
from smallops.secrets.stores._common import Timed, parse_rfc3339

EXAMPLE = "e.g. vault:secret/openai#api_key (mount secret, path openai, field api_key)"


class VaultKV2(Timed):
    """One hvac client per store, logged in on first use and again when its token lapses."""

    def __init__(self, *, timeout: float | None = None) -> None:
        try:
            import hvac
            import requests
        except ImportError:
            raise MissingExtraError("hvac", "vault", "The vault: secret store") from None
        self._hvac: Any = hvac
        self._requests: Any = requests
        self._given_timeout = timeout
        self.addr = os.environ.get("VAULT_ADDR") or "http://127.0.0.1:8200"
        self.namespace = os.environ.get("VAULT_NAMESPACE") or None
        self.role_id = os.environ.get("VAULT_ROLE_ID") or None
        self.approle_mount = os.environ.get("VAULT_APPROLE_MOUNT") or "approle"
        self._client: Any = None
        self._token_expires = float("inf")
        self._lock = threading.Lock()

    def fetch(self, ref: SecretRef) -> Fetched:
        mount, _, path = ref.path.strip("/").partition("/")
        if not path:
            raise SecretStoreError(f"{ref} names no path inside the mount {mount!r}", hint=EXAMPLE)
        data = self._read(ref, mount, path).get("data") or {}
        secret, metadata = data.get("data") or {}, data.get("metadata") or {}
        version = metadata.get("version")
        return Fetched(
            _field(ref, secret),
            version=None if version is None else str(version),
            updated_at=parse_rfc3339(metadata.get("created_time")),
        )

    def _read(self, ref: SecretRef, mount: str, path: str) -> dict[str, Any]:
        client = self._logged_in(ref, renew=False)
        try:
            return self._read_with(client, mount, path)
        except self._hvac.exceptions.Forbidden as exc:
            if self.role_id is None:
                raise self._error(ref, exc) from None
        except Exception as exc:  # hvac's and requests' errors, sorted by _error
            raise self._error(ref, exc) from None
        # a 403 to an AppRole token: it may have lapsed, so log in again and read once more
        client = self._logged_in(ref, renew=True, stale=client)
        try:
            return self._read_with(client, mount, path)
        except Exception as exc:
            raise self._error(ref, exc) from None

    @staticmethod
    def _read_with(client: Any, mount: str, path: str) -> dict[str, Any]:
        result: dict[str, Any] = client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=mount, raise_on_deleted_version=True
        )
        return result

    def _logged_in(self, ref: SecretRef, *, renew: bool, stale: Any = None) -> Any:
        """The client, logging in with the AppRole when there is none yet, its token's lease
        has run out, or `renew` asks (once per stale client, however many threads ask)."""
        with self._lock:
            due = self._client is None or time.monotonic() >= self._token_expires
            if not due and not (renew and self._client is stale):
                return self._client
            client = self._hvac.Client(
                url=self.addr,
                token=os.environ.get("VAULT_TOKEN") or None,
                namespace=self.namespace,
                timeout=self.timeout,
            )
            if self.role_id is not None:
                self._approle_login(ref, client)
            elif not client.token:
                raise SecretStoreError(
                    f"{ref}: no Vault credentials",
                    hint="set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID for an AppRole",
                )
            self._client = client
            return client

    def _approle_login(self, ref: SecretRef, client: Any) -> None:
        secret_id = os.environ.get("VAULT_SECRET_ID") or ""
        if not secret_id:
            raise SecretStoreError(
                f"{ref}: VAULT_ROLE_ID is set but VAULT_SECRET_ID is not",
                hint="set both for an AppRole login, or unset VAULT_ROLE_ID to use VAULT_TOKEN",
            )
        started = time.monotonic()
        try:
            answer = client.auth.approle.login(
                role_id=self.role_id, secret_id=secret_id, mount_point=self.approle_mount
            )
        except Exception as exc:
            raise self._error(ref, exc, during="the AppRole login") from None
        lease = (answer.get("auth") or {}).get("lease_duration") or 0
        # a token with no lease never expires; otherwise log in again a little before it does
        self._token_expires = started + lease * 0.9 if lease > 0 else float("inf")

    def _error(self, ref: SecretRef, exc: Exception, during: str = "") -> SecretStoreError:
        errors, rq = self._hvac.exceptions, self._requests.exceptions
        at = f" during {during}" if during else ""
        if isinstance(exc, rq.Timeout):
            return SecretStoreError(
                f"{ref}: Vault at {self.addr} did not answer within {self.timeout:g}s{at}",
                unreachable=True,
            )
        if isinstance(exc, rq.ConnectionError):
            return SecretStoreError(
                f"{ref}: cannot connect to Vault at {self.addr}{at}",
                unreachable=True,
                hint="check VAULT_ADDR and that Vault is up",
            )
        if isinstance(exc, errors.InvalidPath):
            return SecretStoreError(
                f"{ref}: no such secret in Vault (or its latest version is deleted){at}",
                hint=EXAMPLE,
            )
        if isinstance(exc, (errors.Forbidden, errors.Unauthorized)):
            return SecretStoreError(
                f"{ref}: Vault denied access{at}",
                hint="check the token's or AppRole's policy grants read on this path",
            )
        if isinstance(exc, errors.InvalidRequest) and during:
            return SecretStoreError(
                f"{ref}: Vault refused {during}",
                hint=f"check VAULT_ROLE_ID and VAULT_SECRET_ID for the {self.approle_mount} mount",
            )
        not_serving = (
            errors.VaultDown,  # sealed
            errors.InternalServerError,
            errors.BadGateway,
            errors.RateLimitExceeded,
            errors.VaultNotInitialized,
        )
        if isinstance(exc, not_serving):
            return SecretStoreError(
                f"{ref}: Vault is not serving (sealed, overloaded or failing){at}",
                unreachable=True,
            )
        return SecretStoreError(f"{ref}: Vault answered with an error ({type(exc).__name__}){at}")


def _field(ref: SecretRef, secret: dict[str, Any]) -> str:
    """The field the reference names, or the only one there is."""
    if ref.field is None:
        if len(secret) != 1:
            keys = ", ".join(sorted(secret)) or "none"
            raise SecretStoreError(
                f"{ref} names no field and the secret has {len(secret)} (keys: {keys})",
                hint=f"add #FIELD to the reference, {EXAMPLE}",
            )
        (value,) = secret.values()
    elif ref.field in secret:
        value = secret[ref.field]
    else:
        keys = ", ".join(sorted(secret)) or "none"
        raise SecretStoreError(f"{ref}: the secret has no field {ref.field!r} (keys: {keys})")
    if not isinstance(value, str) or not value:
        raise SecretStoreError(f"{ref}: the field is empty or not a string")
    return value
