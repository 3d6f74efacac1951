"""1Password two ways: a Connect server on 127.0.0.1, and an `op` CLI on PATH.

The Connect server answers what onepasswordconnectsdk asks, with a Bearer token:

    GET /v1/vaults?filter=name eq "NAME"                 [vault summaries]
    GET /v1/vaults/{vault id}/items?filter=title eq "T"  [item summaries]
    GET /v1/vaults/{vault id}/items/{item id}            the full item, fields and sections

Errors are {"status", "message"}: 401 for a token it did not issue, 403 for a vault the
token may not read, 404 for an unknown id. Ids are 26 lower-case letters and digits.

The `op` CLI is a script that keeps a line per run in `calls.log`; it reads
`op read [--no-newline] op://...` and signs in with OP_SERVICE_ACCOUNT_TOKEN, and `mode`
makes it report no network ("down") or hang ("stall").
"""

from __future__ import annotations

import json
import secrets
import string
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from http_fake import JsonFake, Request

_ID_CHARS = string.ascii_lowercase + string.digits


def op_id() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(26))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _filtered(request: Request, attribute: str) -> str | None:
    """The name a SCIM `attribute eq "NAME"` filter asks for, or None without one."""
    text = request.arg("filter")
    if text is None:
        return None
    prefix = f'{attribute} eq "'
    return text[len(prefix) : -1] if text.startswith(prefix) and text.endswith('"') else ""


class ConnectFake(JsonFake):
    def __init__(self) -> None:
        super().__init__()
        self.token = secrets.token_urlsafe(48)
        self.vaults: dict[str, dict[str, Any]] = {}
        self.items: dict[str, dict[str, dict[str, Any]]] = {}  # vault id -> item id -> item
        self.forbidden: set[str] = set()  # vault ids the token may not read

    def vault(self, name: str) -> str:
        vault_id = op_id()
        self.vaults[vault_id] = {
            "id": vault_id,
            "name": name,
            "description": "",
            "attributeVersion": 1,
            "contentVersion": 1,
            "items": 0,
            "type": "USER_CREATED",
            "createdAt": _now(),
            "updatedAt": _now(),
        }
        self.items[vault_id] = {}
        return vault_id

    def item(
        self, vault_id: str, title: str, fields: list[dict[str, Any]], sections: list[str] = ()
    ) -> dict[str, Any]:
        """An item; `fields` are {"label", "value"[, "section"]} with a section's label."""
        section_ids = {label: op_id() for label in sections}
        item = {
            "id": op_id(),
            "title": title,
            "vault": {"id": vault_id},
            "category": "API_CREDENTIAL",
            "version": 1,
            "createdAt": _now(),
            "updatedAt": _now(),
            "lastEditedBy": op_id(),
            "sections": [{"id": sid, "label": label} for label, sid in section_ids.items()],
            "fields": [
                {
                    "id": field.get("id") or op_id(),
                    "type": "CONCEALED",
                    "label": field["label"],
                    "value": field["value"],
                    **(
                        {"section": {"id": section_ids[field["section"]]}}
                        if "section" in field
                        else {}
                    ),
                }
                for field in fields
            ],
        }
        self.items[vault_id][item["id"]] = item
        return item

    def answer(self, request: Request) -> tuple[int, Any]:
        if request.bearer != self.token:
            return 401, {"status": 401, "message": "Invalid token signature"}
        parts = request.path.strip("/").split("/")
        if parts[:2] != ["v1", "vaults"] or request.method != "GET":
            return 404, {"status": 404, "message": "Not found"}
        if len(parts) == 2:
            name = _filtered(request, "name")
            return 200, [
                v
                for v in self.vaults.values()
                if v["id"] not in self.forbidden and name in (None, v["name"])
            ]
        vault_id = parts[2]
        if vault_id in self.forbidden:
            return 403, {"status": 403, "message": "Authorization: Access denied"}
        if vault_id not in self.vaults:
            return 404, {"status": 404, "message": "Invalid Vault UUID"}
        items = self.items[vault_id]
        if len(parts) == 4 and parts[3] == "items":
            title = _filtered(request, "title")
            return 200, [
                {k: v for k, v in item.items() if k not in ("fields", "sections")}
                for item in items.values()
                if title in (None, item["title"])
            ]
        if len(parts) == 5 and parts[3] == "items" and parts[4] in items:
            return 200, items[parts[4]]
        return 404, {"status": 404, "message": "Item not found"}


OP_SCRIPT = '''#!{python}
"""A stand-in for the 1Password CLI: `op read [--no-newline] REFERENCE`."""
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.log"), "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
with open(os.path.join(here, "state.json")) as f:
    state = json.load(f)
stamp = "[ERROR] 2025/01/02 03:04:05 "
args = sys.argv[1:]
if not args or args[0] != "read" or len(args) not in (2, 3):
    sys.stderr.write(stamp + "unknown command\\n"); sys.exit(1)
reference = args[-1]
if state["mode"] == "stall":
    time.sleep(60)
if state["mode"] == "down":
    sys.stderr.write(stamp + "could not read secret '%s': error initializing client: Get "
        "\\"https://my.1password.com/api/v2/auth\\": dial tcp: lookup my.1password.com: no "
        "such host\\n" % reference)
    sys.exit(1)
if os.environ.get("OP_SERVICE_ACCOUNT_TOKEN") != state["token"]:
    sys.stderr.write(stamp + "could not read secret '%s': error initializing client: "
        "Validation: (failed to session.DecodeSACredentials), Server: (failed to "
        "DecodeSACredentials, the token is invalid)\\n" % reference)
    sys.exit(1)
if reference not in state["secrets"]:
    vault, item = reference[5:].split("/")[:2]
    sys.stderr.write(stamp + "could not read secret '%s': \\"%s\\" isn't an item in the "
        "\\"%s\\" vault. Specify the item with its UUID, name, or domain.\\n"
        % (reference, item, vault))
    sys.exit(1)
value = state["secrets"][reference]
sys.stdout.buffer.write(value.encode("utf-8") + (b"" if "--no-newline" in args else b"\\n"))
'''


class FakeOp:
    """An `op` executable in `folder` (put the folder on PATH)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.token = "ops_" + secrets.token_urlsafe(40)
        self.secrets: dict[str, str] = {}
        self.mode = "ok"
        script = folder / "op"
        script.write_text(OP_SCRIPT.format(python=sys.executable))
        script.chmod(0o755)
        self.save()

    def save(self) -> None:
        state = {"token": self.token, "secrets": self.secrets, "mode": self.mode}
        (self.folder / "state.json").write_text(json.dumps(state))

    def calls(self) -> list[list[str]]:
        log = self.folder / "calls.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]
