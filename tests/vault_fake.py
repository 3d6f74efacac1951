"""HashiCorp Vault on 127.0.0.1: KV v2 reads and AppRole logins, as hvac speaks to them.

    GET  /v1/{mount}/data/{path}[?version=N]   X-Vault-Token; 200 {"data": {"data", "metadata"}}
    POST /v1/auth/{approle mount}/login         {"role_id", "secret_id"} -> 200 {"auth": {...}}

As Vault does, it answers 403 {"errors": ["permission denied"]} for a missing, expired or
revoked token and for a path outside the token's policy, 404 {"errors": []} for a secret that
is not there (or whose asked-for version is deleted), and 400 for a wrong role or secret id.
Secrets live per namespace (the X-Vault-Namespace header). Tokens are made at run time.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from typing import Any

from http_fake import JsonFake, Request


def vault_time() -> str:
    """Now, as Vault writes it: RFC 3339 with nanoseconds."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}123Z"


class VaultFake(JsonFake):
    def __init__(self, approle_mount: str = "approle", token_ttl: int = 3600) -> None:
        super().__init__()
        self.root_token = "hvs." + secrets.token_urlsafe(24)
        self.role_id = secrets.token_hex(16)
        self.secret_id = secrets.token_hex(16)
        self.approle_mount = approle_mount
        self.token_ttl = token_ttl  # seconds an AppRole token lives
        self.tokens: dict[str, float] = {self.root_token: float("inf")}  # token -> expiry
        self.kv: dict[tuple[str, str, str], list[dict[str, Any]]] = {}  # (ns, mount, path)
        self.denied: set[str] = set()  # "mount/path" the policy refuses
        self.logins = 0

    def put(self, mount: str, path: str, data: dict[str, Any], namespace: str = "") -> int:
        """Writes a new version; its number."""
        with self.lock:
            versions = self.kv.setdefault((namespace, mount, path), [])
            versions.append({"data": data, "created_time": vault_time(), "deleted": False})
            return len(versions)

    def delete_latest(self, mount: str, path: str, namespace: str = "") -> None:
        with self.lock:
            self.kv[(namespace, mount, path)][-1]["deleted"] = True

    def revoke_all(self) -> None:
        """Every token stops working (as a token's TTL running out does)."""
        with self.lock:
            self.tokens.clear()

    def answer(self, request: Request) -> tuple[int, Any]:
        if request.method == "POST" and request.path == f"/v1/auth/{self.approle_mount}/login":
            return self._login(request.json() or {})
        token = request.headers.get("x-vault-token", "")
        if self.tokens.get(token, 0) < time.monotonic():
            return 403, {"errors": ["permission denied"]}
        mount, _, rest = request.path.removeprefix("/v1/").partition("/")
        if request.method != "GET" or not rest.startswith("data/"):
            return 404, {"errors": [f"no handler for route '{mount}/{rest}'"]}
        path = rest.removeprefix("data/")
        if f"{mount}/{path}" in self.denied:
            return 403, {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}
        namespace = request.headers.get("x-vault-namespace", "")
        versions = self.kv.get((namespace, mount, path))
        if not versions:
            return 404, {"errors": []}
        number = int(request.arg("version") or len(versions))
        version = versions[number - 1]
        metadata = {
            "created_time": version["created_time"],
            "custom_metadata": None,
            "deletion_time": vault_time() if version["deleted"] else "",
            "destroyed": False,
            "version": number,
        }
        if version["deleted"]:
            return 404, {"data": {"data": None, "metadata": metadata}, "errors": []}
        return 200, {
            "request_id": secrets.token_hex(8),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": {"data": version["data"], "metadata": metadata},
            "wrap_info": None,
            "warnings": None,
            "auth": None,
        }

    def _login(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("role_id") != self.role_id or body.get("secret_id") != self.secret_id:
            return 400, {"errors": ["invalid role or secret ID"]}
        self.logins += 1
        token = "hvs." + secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.token_ttl
        return 200, {
            "request_id": secrets.token_hex(8),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": None,
            "auth": {
                "client_token": token,
                "accessor": secrets.token_hex(12),
                "policies": ["default", "llm-keys"],
                "token_policies": ["default", "llm-keys"],
                "metadata": {"role_name": "smallops"},
                "lease_duration": self.token_ttl,
                "renewable": True,
                "entity_id": secrets.token_hex(16),
                "token_type": "service",
                "orphan": True,
            },
        }
