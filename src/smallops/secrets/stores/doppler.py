"""`doppler:NAME` or `doppler:PROJECT/CONFIG/NAME`: a secret of a Doppler config.

A service token (the usual DOPPLER_TOKEN in production) belongs to one project and config,
so the name alone is enough; a personal, CLI or service-account token needs the project and
config, in the reference or in DOPPLER_PROJECT and DOPPLER_CONFIG. DOPPLER_API_HOST changes
the API's address (default https://api.doppler.com), as it does for the Doppler CLI.

This speaks Doppler's documented HTTP API (GET /v3/configs/config/secret) through httpx, not
the `doppler-sdk` package: that package's requests carry no timeout, so a Doppler that
stopped answering would hold the fetch forever, and it insists on a project and config that
a service token already implies. The value is the secret's computed one (its references to
other secrets resolved), as `doppler run` injects it. Doppler does not give a version or a
change time for one secret, so those stay unknown.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from smallops.errors import MissingExtraError
from smallops.secret_refs import SecretRef
from smallops.secrets.base import Fetched, SecretStoreError
from smallops.secrets.stores._common import Timed, one_line

EXAMPLE = "e.g. doppler:OPENAI_API_KEY, or doppler:backend/prd/OPENAI_API_KEY"
SECRET_PATH = "/v3/configs/config/secret"


class Doppler(Timed):
    """One HTTP client per store; the token is read from DOPPLER_TOKEN at each fetch."""

    def __init__(self, *, timeout: float | None = None) -> None:
        try:
            import httpx
        except ImportError:
            raise MissingExtraError("httpx", "doppler", "The doppler: secret store") from None
        self._httpx: Any = httpx
        self._given_timeout = timeout
        self.host = (os.environ.get("DOPPLER_API_HOST") or "https://api.doppler.com").rstrip("/")
        self.project = os.environ.get("DOPPLER_PROJECT") or None
        self.config = os.environ.get("DOPPLER_CONFIG") or None
        self._client: Any = None
        self._lock = threading.Lock()

    def fetch(self, ref: SecretRef) -> Fetched:
        token = os.environ.get("DOPPLER_TOKEN") or ""
        if not token:
            raise SecretStoreError(
                f"{ref}: DOPPLER_TOKEN is not set",
                hint="set DOPPLER_TOKEN to a service token of the config that holds the key",
            )
        params = self._params(ref)
        try:
            response = self._http().get(
                self.host + SECRET_PATH,
                params=params,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            )
        except self._httpx.TimeoutException:
            raise SecretStoreError(
                f"{ref}: Doppler at {self.host} did not answer within {self.timeout:g}s",
                unreachable=True,
            ) from None
        except self._httpx.TransportError:
            raise SecretStoreError(
                f"{ref}: cannot connect to Doppler at {self.host}",
                unreachable=True,
                hint="check DOPPLER_API_HOST and the network",
            ) from None
        if response.status_code != 200:
            raise _refusal(ref, response.status_code, _messages(response), "project" in params)
        return Fetched(_computed(ref, response))

    def _params(self, ref: SecretRef) -> dict[str, str]:
        if ref.field is not None:
            raise SecretStoreError(f"{ref}: a doppler reference takes no #field", hint=EXAMPLE)
        parts = ref.path.split("/")
        if len(parts) == 3 and all(parts):
            project, config, name = parts
            return {"project": project, "config": config, "name": name}
        if len(parts) != 1:
            raise SecretStoreError(f"{ref} is not doppler:NAME or doppler:PROJECT/CONFIG/NAME")
        if self.project and self.config:
            return {"project": self.project, "config": self.config, "name": ref.path}
        return {"name": ref.path}

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._httpx.Client(timeout=self.timeout)
            return self._client


def _refusal(ref: SecretRef, status: int, said: str, named_config: bool) -> SecretStoreError:
    if status == 401:
        return SecretStoreError(
            f"{ref}: Doppler refused the token (401)",
            hint="check DOPPLER_TOKEN: it may be revoked or expired",
        )
    if status == 403:
        return SecretStoreError(
            f"{ref}: the token may not read this project or config (403)",
            hint="a service token reads only its own config; name no other in the reference",
        )
    if status == 429 or status >= 500:
        return SecretStoreError(f"{ref}: Doppler is not serving ({status})", unreachable=True)
    if status == 404:
        return SecretStoreError(f"{ref}: no such secret in the config ({said})", hint=EXAMPLE)
    hint = (
        EXAMPLE
        if named_config
        else "a personal or CLI token needs doppler:PROJECT/CONFIG/NAME, or DOPPLER_PROJECT"
        " and DOPPLER_CONFIG"
    )
    return SecretStoreError(f"{ref}: Doppler refused the request ({status}: {said})", hint=hint)


def _messages(response: Any) -> str:
    """Doppler's error body, {"messages": [...], "success": false}, as one short line."""
    try:
        messages = response.json().get("messages") or []
    except (ValueError, AttributeError):
        messages = []
    return one_line("; ".join(str(m) for m in messages)) or "no message"


def _computed(ref: SecretRef, response: Any) -> str:
    try:
        value = response.json()["value"]["computed"]
    except (ValueError, KeyError, TypeError):
        raise SecretStoreError(f"{ref}: Doppler's answer has no value in it") from None
    if not isinstance(value, str) or not value:
        raise SecretStoreError(f"{ref}: the secret is empty")
    return value
