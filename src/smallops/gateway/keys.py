"""Virtual keys: one per team or route, given out once, kept only as a SHA-256.

A key is `sk-smallops-` and 43 URL-safe characters (32 random bytes). A fast hash is right
here, unlike for passwords: the key is random and long, so there is nothing to guess, and the
lookup sits on every request. The gateway caches lookups for a few seconds (KeyCache), so a
revoked key stops working within that time on every instance. While the database does not
answer, a key seen before is judged by its last lookup; a key never seen gets 503.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from smallops.errors import ConfigError, InputError
from smallops.ids import uuid7
from smallops.storage import gateway_keys as table
from smallops.storage.db import Engine

PREFIX = "sk-smallops-"
SHOWN = len(PREFIX) + 6  # how much of a key `keys list` shows, to tell keys apart
CACHE_TTL = 5.0  # seconds a lookup (found, revoked or unknown) is trusted
CACHE_SIZE = 10_000  # lookups kept at most; the oldest half goes when it is full


@dataclass(frozen=True)
class KeyInfo:
    """What the gateway knows of a key once it is found (never the key)."""

    id: str
    name: str
    routes: tuple[str, ...] | None  # None: every route
    rpm: int | None
    daily_usd: float | None
    revoked: bool

    def may_use(self, route: str) -> bool:
        return self.routes is None or route in self.routes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def create_key(
    engine: Engine,
    name: str,
    *,
    routes: list[str] | None = None,
    rpm: int | None = None,
    daily_usd: float | None = None,
    known_routes: Callable[[], list[str]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Make a key: (the key itself, to be shown once, and its row without the hash)."""
    name = name.strip()
    if not name or len(name) > 100 or any(c.isspace() for c in name):
        raise InputError(
            f"key name {name!r} is not usable",
            hint="1 to 100 characters without spaces, e.g. the team: billing-team",
        )
    if routes is not None and not routes:
        raise InputError(
            "--routes names no route", hint="name at least one, or leave it out for every route"
        )
    if routes is not None and known_routes is not None:
        known = known_routes()
        unknown = [r for r in routes if r not in known]
        if unknown:
            raise InputError(
                f"no route {unknown[0]!r} in [gateway.routes] of smallops.toml",
                hint=f"routes: {', '.join(known) or '(none yet)'}",
            )
    if rpm is not None and rpm < 1:
        raise InputError(f"--rpm {rpm} is not a rate", hint="requests per minute, 1 or more")
    if daily_usd is not None and not daily_usd > 0:
        raise InputError(f"--daily-usd {daily_usd} is not a budget", hint="USD above 0, e.g. 5")
    key = new_key()
    row = {
        "id": uuid7(),
        "name": name,
        "prefix": key[:SHOWN],
        "key_hash": hash_key(key),
        "routes": routes,
        "rpm": rpm,
        "daily_usd": daily_usd,
        "created_at": datetime.now(timezone.utc),
        "revoked_at": None,
    }
    try:
        table.insert_key(engine, row)
    except table.NameTaken:
        raise ConfigError(
            f"a key named {name!r} is already active",
            hint=f"revoke it first (smallops gateway keys revoke {name}) or choose another name",
        ) from None
    del row["key_hash"]
    return key, row


def revoke(engine: Engine, name_or_id: str) -> list[dict[str, Any]]:
    """Revoke the active key with this name or id; InputError when there is none."""
    revoked = table.revoke_key(engine, name_or_id, datetime.now(timezone.utc))
    if not revoked:
        raise InputError(
            f"no active key named {name_or_id!r} (nor with that id)",
            hint="smallops gateway keys list shows them",
        )
    return revoked


def info_of(row: dict[str, Any]) -> KeyInfo:
    routes = row.get("routes")
    return KeyInfo(
        id=row["id"],
        name=row["name"],
        routes=tuple(routes) if routes is not None else None,
        rpm=row.get("rpm"),
        daily_usd=row.get("daily_usd"),
        revoked=row.get("revoked_at") is not None,
    )


class KeyCache:
    """Key lookups by hash, each trusted for CACHE_TTL seconds (unknown keys too, so a client
    hammering with a bad key costs one query per TTL, not one per request)."""

    def __init__(self, engine: Callable[[], Engine], ttl: float = CACHE_TTL) -> None:
        self._engine = engine
        self.ttl = ttl
        self._found: dict[str, tuple[float, KeyInfo | None]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> tuple[bool, KeyInfo | None]:
        """(known, info) from memory only: known is False when the database must be asked."""
        entry = self._found.get(hash_key(key))
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def stale(self, key: str) -> tuple[bool, KeyInfo | None]:
        """(known, info) from memory, however old: what the last lookup found, for when the
        database does not answer."""
        entry = self._found.get(hash_key(key))
        return (False, None) if entry is None else (True, entry[1])

    def lookup(self, key: str) -> KeyInfo | None:
        """The key's info, from the database (blocking: call it off the event loop)."""
        digest = hash_key(key)
        row = table.find_by_hash(self._engine(), digest)
        info = info_of(row) if row is not None else None
        with self._lock:
            if len(self._found) >= CACHE_SIZE:
                for old in list(self._found)[: CACHE_SIZE // 2]:
                    self._found.pop(old, None)
            self._found[digest] = (time.monotonic() + self.ttl, info)
        return info
