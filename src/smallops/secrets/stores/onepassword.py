"""`op://VAULT/ITEM[/SECTION]/FIELD`: a field of a 1Password item, 1Password's own reference.

Two ways in, chosen by the environment:

- a Connect server, when OP_CONNECT_HOST and OP_CONNECT_TOKEN are set: read through the
  `onepasswordconnectsdk` client (vault and item by name or id, field by label or id);
- otherwise the `op` CLI (`op read`), signed in by OP_SERVICE_ACCOUNT_TOKEN or a desktop
  session, run without a shell and stopped at the timeout.

Names are matched as 1Password matches them; a field whose label is shared inside the item
is refused as ambiguous rather than guessed at.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from typing import Any

from smallops.errors import MissingExtraError
from smallops.secret_refs import SecretRef
from smallops.secrets.base import Fetched, SecretStoreError
from smallops.secrets.stores._common import Timed, one_line

EXAMPLE = "e.g. op://Private/OpenAI/credential or op://Prod/OpenAI/api/key (with a section)"
_NO_CLI_HINT = (
    "install the 1Password CLI (op) and set OP_SERVICE_ACCOUNT_TOKEN, or set OP_CONNECT_HOST"
    " and OP_CONNECT_TOKEN to use a Connect server"
)
# what `op` and its Go networking print when 1Password could not be asked at all
_CLI_UNREACHABLE = re.compile(
    r"dial tcp|connection refused|no such host|timeout|deadline exceeded|network is unreachable"
    r"|connection reset|unexpected EOF|\(5\d\d\)|service unavailable",
    re.IGNORECASE,
)
_STATUS = re.compile(r"Received (\d{3})")


class OnePassword(Timed):
    """A Connect client when a Connect server is configured, else the `op` CLI."""

    def __init__(self, *, timeout: float | None = None) -> None:
        self._given_timeout = timeout
        self.host = os.environ.get("OP_CONNECT_HOST") or None
        self._sdk: Any = None
        self._httpx: Any = None
        self._client: Any = None
        self._lock = threading.Lock()
        if self.host:
            try:
                import httpx
                import onepasswordconnectsdk
                import onepasswordconnectsdk.client
                import onepasswordconnectsdk.config
            except ImportError:
                raise MissingExtraError(
                    "onepasswordconnectsdk", "onepassword", "A 1Password Connect server"
                ) from None
            self._sdk = onepasswordconnectsdk
            self._httpx = httpx

    def fetch(self, ref: SecretRef) -> Fetched:
        return self._from_connect(ref) if self.host else self._from_cli(ref)

    # -- Connect -------------------------------------------------------------------------

    def _from_connect(self, ref: SecretRef) -> Fetched:
        vault, item_name, section, field_name = _parts(ref)
        try:
            item = self._connect(ref).get_item(item_name, vault)
        except SecretStoreError:
            raise
        except Exception as exc:  # the SDK's, httpx's and its JSON decoding's errors
            raise self._connect_error(ref, exc) from None
        value = _field_value(ref, item, section, field_name)
        return Fetched(
            value,
            version=None if item.version is None else str(item.version),
            updated_at=item.updated_at,
        )

    def _connect(self, ref: SecretRef) -> Any:
        with self._lock:
            if self._client is None:
                token = os.environ.get("OP_CONNECT_TOKEN") or ""
                if not token:
                    raise SecretStoreError(
                        f"{ref}: OP_CONNECT_HOST is set but OP_CONNECT_TOKEN is not",
                        hint="set OP_CONNECT_TOKEN to the Connect server's access token",
                    )
                config = self._sdk.config.ClientConfig(timeout=self.timeout)
                self._client = self._sdk.client.new_client(self.host, token, config=config)
            return self._client

    def _connect_error(self, ref: SecretRef, exc: Exception) -> SecretStoreError:
        httpx = self._httpx
        if isinstance(exc, httpx.TimeoutException):
            return SecretStoreError(
                f"{ref}: the 1Password Connect server did not answer within {self.timeout:g}s",
                unreachable=True,
            )
        if isinstance(exc, httpx.TransportError):
            return SecretStoreError(
                f"{ref}: cannot connect to the 1Password Connect server at {self.host}",
                unreachable=True,
                hint="check OP_CONNECT_HOST and that the Connect server is up",
            )
        text = str(exc)
        status = getattr(exc, "status_code", None) or _status(text)
        if status == 401:
            return SecretStoreError(
                f"{ref}: the Connect server refused the token",
                hint="check OP_CONNECT_TOKEN (a Connect token, not a service account token)",
            )
        if status == 403:
            return SecretStoreError(
                f"{ref}: the Connect token may not read this vault",
                hint="give the token access to the vault in 1Password",
            )
        if status is not None and status >= 500:
            return SecretStoreError(
                f"{ref}: the 1Password Connect server is failing ({status})", unreachable=True
            )
        if status == 404 or text.startswith("Found 0 "):
            return SecretStoreError(f"{ref}: no such vault or item", hint=EXAMPLE)
        if text.startswith("Found "):
            return SecretStoreError(
                f"{ref}: more than one vault or item has that name",
                hint="name it by its id instead",
            )
        return SecretStoreError(f"{ref}: the Connect server answered with an error")

    # -- the op CLI ----------------------------------------------------------------------

    def _from_cli(self, ref: SecretRef) -> Fetched:
        op = shutil.which("op")
        if op is None:
            raise SecretStoreError(
                f"{ref}: the 1Password CLI (op) is not installed", hint=_NO_CLI_HINT
            )
        try:
            done = subprocess.run(
                [op, "read", "--no-newline", str(ref)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SecretStoreError(
                f"{ref}: the 1Password CLI did not answer within {self.timeout:g}s",
                unreachable=True,
            ) from None
        except OSError as exc:
            raise SecretStoreError(
                f"{ref}: the 1Password CLI could not be run ({exc.strerror})", hint=_NO_CLI_HINT
            ) from None
        if done.returncode != 0:
            said = _scrub(done.stderr.decode("utf-8", "replace"), str(ref))
            raise SecretStoreError(
                f"{ref}: op read failed: {one_line(said, 240) or f'exit {done.returncode}'}",
                unreachable=bool(_CLI_UNREACHABLE.search(said)),
                hint="check the reference, and that OP_SERVICE_ACCOUNT_TOKEN may read the vault",
            )
        try:
            value = done.stdout.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretStoreError(f"{ref}: op read gave bytes that are not UTF-8 text") from None
        if not value:
            raise SecretStoreError(f"{ref}: the field is empty")
        return Fetched(value)


def _parts(ref: SecretRef) -> tuple[str, str, str | None, str]:
    """Vault, item, section (or None) and field of a reference."""
    parts = ref.path.split("/")
    if len(parts) not in (3, 4) or not all(parts):
        raise SecretStoreError(f"{ref} is not op://VAULT/ITEM[/SECTION]/FIELD", hint=EXAMPLE)
    if any('"' in part for part in parts[:2]):
        raise SecretStoreError(f"{ref}: a vault or item name with a double quote", hint=EXAMPLE)
    vault, item, *rest = parts
    return vault, item, rest[0] if len(rest) == 2 else None, rest[-1]


def _field_value(ref: SecretRef, item: Any, section: str | None, name: str) -> str:
    """The one field named `name` (label or id), inside `section` (label or id) if given."""
    sections = {s.id: s for s in item.sections or []}
    found = []
    for field in item.fields or []:
        if name not in (field.label, field.id):
            continue
        if section is not None:
            where = sections.get(getattr(field.section, "id", None))
            if where is None or section not in (where.label, where.id):
                continue
        found.append(field)
    if not found:
        where = f" in section {section!r}" if section else ""
        raise SecretStoreError(f"{ref}: the item has no field {name!r}{where}", hint=EXAMPLE)
    if len(found) > 1:
        raise SecretStoreError(
            f"{ref}: {len(found)} fields of the item are called {name!r}",
            hint="name the section too, op://VAULT/ITEM/SECTION/FIELD, or use the field's id",
        )
    value = found[0].value
    if not isinstance(value, str) or not value:
        raise SecretStoreError(f"{ref}: the field is empty")
    return value


def _status(text: str) -> int | None:
    match = _STATUS.search(text)
    return int(match.group(1)) if match else None


def _scrub(text: str, reference: str) -> str:
    """The CLI's error without its timestamp, the reference we name already, or any token
    from our environment."""
    text = re.sub(r"\[ERROR\] \d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", "", text)
    text = text.replace(f"could not read secret '{reference}': ", "")
    for name in ("OP_SERVICE_ACCOUNT_TOKEN", "OP_CONNECT_TOKEN", "OP_SESSION"):
        token = os.environ.get(name)
        if token and len(token) >= 8:
            text = text.replace(token, "[redacted]")
    return text
