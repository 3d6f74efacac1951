"""The gateway's virtual keys (`gateway_keys`): made, listed, revoked, and found by hash.

Only the SHA-256 of a key reaches this table; hashing happens in smallops.gateway.keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update

from smallops.storage.db import write_transaction
from smallops.storage.schema import gateway_keys


class NameTaken(Exception):
    """An active key already has this name."""


def insert_key(engine: Engine, row: Mapping[str, Any]) -> None:
    """Add a key, unless an active key has its name (checked under the write lock)."""
    with write_transaction(engine) as connection:
        taken = connection.execute(
            select(gateway_keys.c.id)
            .where(gateway_keys.c.name == row["name"], gateway_keys.c.revoked_at.is_(None))
            .with_for_update()
        ).first()
        if taken is not None:
            raise NameTaken(row["name"])
        connection.execute(gateway_keys.insert().values(**row))


def list_keys(engine: Engine, *, revoked: bool = False) -> list[dict[str, Any]]:
    """Keys, oldest first; revoked ones only when asked. Never the hashes."""
    columns = [c for c in gateway_keys.columns if c.name != "key_hash"]
    query = select(*columns).order_by(gateway_keys.c.created_at, gateway_keys.c.id)
    if not revoked:
        query = query.where(gateway_keys.c.revoked_at.is_(None))
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def find_by_hash(engine: Engine, key_hash: str) -> dict[str, Any] | None:
    """The key with this hash, revoked or not; None when there is none."""
    query = select(gateway_keys).where(gateway_keys.c.key_hash == key_hash)
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return dict(row._mapping) if row is not None else None


def revoke_key(engine: Engine, name_or_id: str, at: datetime) -> list[dict[str, Any]]:
    """Revoke the active key with this name or id; the keys revoked (none when no such key)."""
    active = gateway_keys.c.revoked_at.is_(None)
    which = (gateway_keys.c.name == name_or_id) | (gateway_keys.c.id == name_or_id)
    with engine.begin() as connection:
        found = connection.execute(
            select(gateway_keys.c.id, gateway_keys.c.name).where(active, which)
        ).all()
        if found:
            ids = [row.id for row in found]
            connection.execute(
                update(gateway_keys).where(gateway_keys.c.id.in_(ids)).values(revoked_at=at)
            )
    return [dict(row._mapping) for row in found]
