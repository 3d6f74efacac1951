"""GCP Secret Manager on 127.0.0.1, as its REST API answers the official client:

    GET /v1/projects/{p}/secrets/{s}/versions/{v}:access   (v: a number, an alias or latest)
    -> 200 {"name": "projects/{number}/secrets/{s}/versions/{n}",
            "payload": {"data": base64}}

Errors are Google's JSON error body {"error": {"code", "message", "status"}}: 401
UNAUTHENTICATED, 403 PERMISSION_DENIED (also for a secret the caller may not see), 404
NOT_FOUND, 400 FAILED_PRECONDITION for a disabled version.

Callers authenticate as a service account does with the client library: a self-signed JWT
(RS256, aud https://secretmanager.googleapis.com/) as the bearer token. The fake makes the
service account's key at run time, writes its credentials file for Application Default
Credentials, and checks each request's signature, audience and expiry.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from http_fake import JsonFake, Request

AUDIENCE = "https://secretmanager.googleapis.com/"
ACCESS = re.compile(r"/v1/projects/([^/]+)/secrets/([^/]+)/versions/([^/:]+):access")


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ServiceAccount:
    """A service account key, made now."""

    def __init__(self, email: str) -> None:
        self.email = email
        self.key_id = secrets.token_hex(20)
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def credentials_file(self, folder: Path, token_uri: str) -> Path:
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path = folder / f"{self.key_id[:8]}.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "smallops-test",
                    "private_key_id": self.key_id,
                    "private_key": pem,
                    "client_email": self.email,
                    "client_id": str(secrets.randbelow(10**20)),
                    "token_uri": token_uri,
                }
            )
        )
        return path


class GcpSmFake(JsonFake):
    def __init__(self) -> None:
        super().__init__()
        self.accounts: dict[str, ServiceAccount] = {}  # key id -> the account it belongs to
        self.readers: dict[str, set[tuple[str, str]]] = {}  # email -> (project, secret)
        self.versions: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.aliases: dict[tuple[str, str, str], int] = {}
        self.project_numbers: dict[str, str] = {}

    def account(self, email: str = "smallops@smallops-test.iam.gserviceaccount.com") -> Any:
        """A service account this fake knows (and so takes the signatures of)."""
        account = ServiceAccount(email)
        self.accounts[account.key_id] = account
        self.readers.setdefault(email, set())
        return account

    def add(self, project: str, secret: str, data: bytes, *, readers: tuple[str, ...]) -> int:
        """Adds an enabled version; its number."""
        with self.lock:
            self.project_numbers.setdefault(project, str(secrets.randbelow(10**12)))
            versions = self.versions.setdefault((project, secret), [])
            versions.append({"data": data, "state": "ENABLED"})
            for email in readers:
                self.readers.setdefault(email, set()).add((project, secret))
            return len(versions)

    def answer(self, request: Request) -> tuple[int, Any]:
        email = self._caller(request.bearer)
        if email is None:
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        match = ACCESS.fullmatch(request.path)
        if request.method != "GET" or match is None:
            return _error(404, "NOT_FOUND", f"The URL {request.path} was not found.")
        project, secret, wanted = match.groups()
        resource = f"projects/{project}/secrets/{secret}/versions/{wanted}"
        if (project, secret) not in self.readers.get(email, set()):
            return _error(
                403,
                "PERMISSION_DENIED",
                f"Permission 'secretmanager.versions.access' denied for resource '{resource}'"
                " (or it may not exist).",
            )
        versions = self.versions.get((project, secret), [])
        if wanted == "latest":  # the newest version, whatever its state
            number = len(versions)
        elif wanted.isdigit():
            number = int(wanted)
        else:
            number = self.aliases.get((project, secret, wanted), 0)
        if not 0 < number <= len(versions):
            return _error(404, "NOT_FOUND", f"Secret Version [{resource}] not found.")
        version = versions[number - 1]
        if version["state"] != "ENABLED":
            return _error(
                400,
                "FAILED_PRECONDITION",
                f"Secret Version [{resource}] is in {version['state']} state.",
            )
        # dataCrc32c, an optional field, is left out: nothing on the client side checks it
        return 200, {
            "name": f"projects/{self.project_numbers[project]}/secrets/{secret}/versions/{number}",
            "payload": {"data": base64.b64encode(version["data"]).decode()},
        }

    def _caller(self, token: str) -> str | None:
        """The service account whose valid self-signed JWT this is, else None."""
        try:
            head, body, signature = token.split(".")
            header, claims = json.loads(_b64url(head)), json.loads(_b64url(body))
            account = self.accounts[header["kid"]]
            account.private_key.public_key().verify(
                _b64url(signature),
                f"{head}.{body}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, KeyError, InvalidSignature):
            return None
        if claims.get("aud") != AUDIENCE or claims.get("iss") != account.email:
            return None
        if not claims.get("iat", 0) - 60 <= time.time() < claims.get("exp", 0):
            return None
        return account.email


def _error(code: int, status: str, message: str) -> tuple[int, Any]:
    return code, {"error": {"code": code, "message": message, "status": status}}
