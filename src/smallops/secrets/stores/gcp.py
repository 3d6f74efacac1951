"""`gcp-sm:PROJECT/SECRET[#VERSION]`: a version of a GCP Secret Manager secret (the latest
when none is named; a number or an alias otherwise). The resource name itself is taken too:
`gcp-sm:projects/P/secrets/S/versions/V`, with `locations/L/` for a regional secret.

Credentials are Google's Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, the
gcloud login, or the metadata server on GCP). The client speaks REST, not gRPC, so one plain
HTTPS connection is all it needs and SMALLOPS_GCP_SM_ENDPOINT can point it elsewhere: a
regional endpoint (`https://secretmanager.LOCATION.rep.googleapis.com`) or a local server.

Only `versions.access` is called, the one permission roles/secretmanager.secretAccessor
grants, so the version's creation time (a second call, another permission) is not known.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from smallops.errors import MissingExtraError
from smallops.secret_refs import SecretRef
from smallops.secrets.base import Fetched, SecretStoreError
from smallops.secrets.stores._common import Timed

EXAMPLE = "e.g. gcp-sm:my-project/openai-key (the latest version) or gcp-sm:my-project/openai-key#3"
_NAME = re.compile(r"projects/[^/]+/(?:locations/[^/]+/)?secrets/[^/]+(?:/versions/[^/]+)?")
_CREDENTIALS_HINT = (
    "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS"
    " to a credentials file"
)


class GcpSecretManager(Timed):
    """One Secret Manager client per store, made (and its credentials found) on first use."""

    def __init__(self, *, timeout: float | None = None) -> None:
        try:
            import google.auth.exceptions
            import requests
            from google.api_core import exceptions
            from google.cloud import secretmanager
        except ImportError:
            raise MissingExtraError(
                "google-cloud-secret-manager", "gcp", "The gcp-sm: secret store"
            ) from None
        self._secretmanager: Any = secretmanager
        self._api: Any = exceptions
        self._auth: Any = google.auth.exceptions
        self._requests: Any = requests
        self._given_timeout = timeout
        self.endpoint = os.environ.get("SMALLOPS_GCP_SM_ENDPOINT") or None
        self._client: Any = None
        self._lock = threading.Lock()

    def fetch(self, ref: SecretRef) -> Fetched:
        name = version_name(ref)
        try:
            response = self._ready_client().access_secret_version(
                name=name, retry=None, timeout=self.timeout
            )
        except Exception as exc:  # the client's, google-auth's and requests' errors
            raise self._error(ref, exc) from None
        try:
            value = response.payload.data.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretStoreError(f"{ref}: the secret is not UTF-8 text") from None
        if not value:
            raise SecretStoreError(f"{ref}: the secret version is empty")
        # the name the store answers with has the version's number, even for "latest"
        return Fetched(value, version=response.name.rpartition("/versions/")[2] or None)

    def _ready_client(self) -> Any:
        with self._lock:
            if self._client is None:
                options = {"api_endpoint": self.endpoint} if self.endpoint else None
                self._client = self._secretmanager.SecretManagerServiceClient(
                    transport="rest", client_options=options
                )
            return self._client

    def _error(self, ref: SecretRef, exc: Exception) -> SecretStoreError:
        api, auth, rq = self._api, self._auth, self._requests.exceptions
        where = self.endpoint or "Secret Manager"
        if isinstance(exc, auth.DefaultCredentialsError):
            return SecretStoreError(f"{ref}: no Google credentials found", hint=_CREDENTIALS_HINT)
        if isinstance(exc, rq.Timeout | api.DeadlineExceeded | auth.TimeoutError):
            return SecretStoreError(
                f"{ref}: {where} did not answer within {self.timeout:g}s", unreachable=True
            )
        if isinstance(exc, rq.ConnectionError | auth.TransportError):
            return SecretStoreError(f"{ref}: cannot connect to {where}", unreachable=True)
        if isinstance(exc, api.ServerError | api.TooManyRequests):
            return SecretStoreError(
                f"{ref}: {where} is not serving ({exc.code} {_status(exc)})", unreachable=True
            )
        if isinstance(exc, auth.RefreshError | api.Unauthorized):
            return SecretStoreError(
                f"{ref}: Google did not accept the credentials", hint=_CREDENTIALS_HINT
            )
        if isinstance(exc, api.NotFound):
            return SecretStoreError(f"{ref}: no such secret or version", hint=EXAMPLE)
        if isinstance(exc, api.Forbidden):
            return SecretStoreError(
                f"{ref}: access denied (or the secret does not exist)",
                hint="grant roles/secretmanager.secretAccessor on the secret to this identity",
            )
        if isinstance(exc, api.FailedPrecondition) or _status(exc) == "FAILED_PRECONDITION":
            return SecretStoreError(f"{ref}: the secret version is disabled or destroyed")
        if isinstance(exc, api.GoogleAPICallError):
            return SecretStoreError(f"{ref}: Secret Manager refused ({exc.code} {_status(exc)})")
        return SecretStoreError(f"{ref}: the fetch failed ({type(exc).__name__})")


def version_name(ref: SecretRef) -> str:
    """The secret version's resource name that a reference stands for."""
    path = ref.path.strip("/")
    if path.startswith("projects/"):
        if not _NAME.fullmatch(path) or ("/versions/" in path and ref.field):
            raise SecretStoreError(
                f"{ref} is not a secret's resource name",
                hint="projects/P/secrets/S[/versions/V], or P/S[#V]",
            )
        name = path if "/versions/" in path else f"{path}/versions/{ref.field or 'latest'}"
    else:
        project, sep, secret = path.partition("/")
        if not sep or not project or not secret or "/" in secret:
            raise SecretStoreError(f"{ref} does not name a project and a secret", hint=EXAMPLE)
        name = f"projects/{project}/secrets/{secret}/versions/{ref.field or 'latest'}"
    if "/" in name.rpartition("/versions/")[2]:
        raise SecretStoreError(f"{ref} names a version that cannot be one", hint=EXAMPLE)
    return name


def _status(exc: Any) -> str:
    """The canonical status (NOT_FOUND, FAILED_PRECONDITION...) of an API error. Over REST the
    client picks the exception by HTTP status alone, so the status is read from the body."""
    code = getattr(getattr(exc, "grpc_status_code", None), "name", None)
    if code:
        return str(code)
    try:
        return str(exc.response.json()["error"]["status"])
    except Exception:
        return "error"
