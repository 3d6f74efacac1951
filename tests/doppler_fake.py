"""Doppler's API on 127.0.0.1: one secret of a config, as its documentation gives it.

    GET /v3/configs/config/secret?name=NAME[&project=P&config=C]
    -> 200 {"name", "value": {"raw", "computed", "note", "rawVisibility", ...}}

The token comes as a Bearer token or as HTTP Basic's user name, as Doppler takes either. A
service token belongs to one project and config, which it implies when the query names none
and which it must match when it does; a personal token needs both named. Errors are
{"messages": [...], "success": false}: 401 for a token Doppler did not issue, 403 for a
project or config out of the token's reach, 400 for a missing project, 404 for no such secret.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from http_fake import JsonFake, Request


class DopplerFake(JsonFake):
    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, tuple[str, str] | None] = {}  # token -> its config, or None
        self.secrets: dict[tuple[str, str, str], tuple[str, str]] = {}  # -> (raw, computed)

    def service_token(self, project: str, config: str) -> str:
        token = "dp.st." + secrets.token_urlsafe(30)
        self.tokens[token] = (project, config)
        return token

    def personal_token(self) -> str:
        token = "dp.pt." + secrets.token_urlsafe(30)
        self.tokens[token] = None
        return token

    def set(self, project: str, config: str, name: str, raw: str, computed: str = "") -> None:
        with self.lock:
            self.secrets[(project, config, name)] = (raw, computed or raw)

    def answer(self, request: Request) -> tuple[int, Any]:
        token = self._token(request)
        if token not in self.tokens:
            return _error(401, "Invalid Auth token")
        if request.method != "GET" or request.path != "/v3/configs/config/secret":
            return _error(404, "Not found")
        project, config, name = request.arg("project"), request.arg("config"), request.arg("name")
        scope = self.tokens[token]
        if scope is not None:
            if (project or scope[0], config or scope[1]) != scope:
                return _error(403, "You do not have access to the requested project or config")
            project, config = scope
        elif not project:
            return _error(400, "You must specify a project")
        elif not config:
            return _error(400, "You must specify a config")
        found = self.secrets.get((project, config, name or ""))
        if found is None:
            return _error(404, "Could not find requested secret")
        raw, computed = found
        return 200, {
            "name": name,
            "value": {
                "raw": raw,
                "computed": computed,
                "note": "",
                "rawVisibility": "masked",
                "computedVisibility": "masked",
                "rawValueType": {"type": "string"},
                "computedValueType": {"type": "string"},
            },
        }

    @staticmethod
    def _token(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if auth.startswith("Basic "):
            return base64.b64decode(auth[6:]).decode().partition(":")[0]
        return auth.removeprefix("Bearer ")


def _error(status: int, message: str) -> tuple[int, Any]:
    return status, {"messages": [message], "success": False}
