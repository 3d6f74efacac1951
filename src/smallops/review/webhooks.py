"""Decisions delivered to a URL as Standard Webhooks (webhook-id, -timestamp, -signature).

Each decision writes one outbox row in its own transaction, so a decision is never without its
delivery. Deliveries are sent until the receiver answers 2xx, with backoff, under a lease so two
senders never send the same one at once; once delivered, a delivery is never sent again. Its id
is the `webhook-id` of every attempt, so a receiver can drop a retry it already processed.
Redirects are never followed: a 3xx is a failed attempt like any other non-2xx answer, since
following one would count a body-less GET elsewhere as the delivery.

The signature is `v1,` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")); a `whsec_` secret
is base64 after the prefix, as in the Standard Webhooks specification.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, Engine, or_, select, update

from smallops.errors import ConfigError
from smallops.ids import uuid7
from smallops.storage.db import write_transaction
from smallops.storage.schema import webhook_deliveries

DEFAULT_SECRET_ENV = "SMALLOPS_WEBHOOK_SECRET"
TOLERANCE = 300  # seconds a receiver accepts between the timestamp and its clock
LEASE = timedelta(seconds=60)
MAX_BACKOFF = 3600.0


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Leave a 3xx answer as it is: urllib then raises it as an HTTPError."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_RefuseRedirects)


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: `whsec_<base64>`, or the raw text of any other secret."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    digest = hmac.new(
        secret_key(secret), f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256
    ).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Mapping[str, str], body: str, *, now: float | None = None) -> bool:
    """True when the headers carry a valid, fresh signature of `body` (for receivers, and tests)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > TOLERANCE:
        return False
    expected = sign(secret, message_id, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)


def enqueue(connection: Connection, url: str, decision: dict[str, Any]) -> str:
    """Add the delivery of one decision to the outbox, in the decision's transaction."""
    message_id = f"msg_{uuid7().replace('-', '')}"
    body = json.dumps(
        {
            "type": "review.decided",
            "timestamp": decision["decided_at"].isoformat(),
            "data": {
                "run_id": decision["run_id"],
                "workflow": decision["workflow"],
                "decision": decision["status"],
                "output": decision["output"],
                "reviewer": decision["reviewer"],
                "reason": decision["reason"],
            },
        },
        sort_keys=True,
        default=str,
    )
    now = datetime.now(timezone.utc)
    connection.execute(
        webhook_deliveries.insert().values(
            id=message_id,
            run_id=decision["run_id"],
            url=url,
            payload=body,
            state="pending",
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )
    )
    return message_id


def secret_from_env(name: str = DEFAULT_SECRET_ENV) -> str:
    secret = os.environ.get(name)
    if not secret:
        raise ConfigError(
            f"{name} is not set: webhooks are signed",
            hint=f"export {name}=whsec_... (base64 of at least 24 random bytes)",
        )
    return secret


def deliver_due(
    engine: Engine, secret_for: Any, *, limit: int = 20, timeout: float = 10.0
) -> tuple[int, int]:
    """Send the deliveries that are due; returns (delivered, failed this round)."""
    delivered = failed = 0
    for delivery in _claim_due(engine, limit):
        error = _post(delivery, secret_for(delivery["url"]), timeout)
        _settle(engine, delivery, error)
        if error is None:
            delivered += 1
        else:
            failed += 1
    return delivered, failed


def _claim_due(engine: Engine, limit: int) -> list[dict[str, Any]]:
    now = datetime.now(timezone.utc)
    query = (
        select(webhook_deliveries)
        .where(webhook_deliveries.c.state == "pending")
        .where(webhook_deliveries.c.next_attempt_at <= now)
        .where(
            or_(
                webhook_deliveries.c.claimed_until.is_(None),
                webhook_deliveries.c.claimed_until < now,
            )
        )
        .order_by(webhook_deliveries.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    with write_transaction(engine) as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
        if rows:
            connection.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id.in_([row["id"] for row in rows]))
                .values(claimed_until=now + LEASE)
            )
    return rows


def _post(delivery: dict[str, Any], secret: str, timeout: float) -> str | None:
    """POST one delivery; None on a 2xx answer, else what went wrong."""
    timestamp = int(time.time())
    request = urllib.request.Request(
        delivery["url"],
        data=delivery["payload"].encode(),
        method="POST",
        headers={
            "content-type": "application/json",
            "user-agent": "smallops-webhooks",
            "webhook-id": delivery["id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, delivery["id"], timestamp, delivery["payload"]),
        },
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return _failed_status(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    return None if 200 <= status < 300 else _failed_status(status)


def _failed_status(status: int) -> str:
    redirect = 300 <= status < 400
    return f"HTTP {status}" + (" (redirects are not followed)" if redirect else "")


def _settle(engine: Engine, delivery: dict[str, Any], error: str | None) -> None:
    now = datetime.now(timezone.utc)
    attempts = delivery["attempts"] + 1
    if error is None:
        values: dict[str, Any] = {
            "state": "delivered",
            "delivered_at": now,
            "attempts": attempts,
            "claimed_until": None,
            "last_error": None,
        }
    else:
        backoff = min(MAX_BACKOFF, 2.0 ** min(attempts, 12))
        values = {
            "attempts": attempts,
            "claimed_until": None,
            "last_error": error,
            "next_attempt_at": now + timedelta(seconds=backoff),
        }
    with engine.begin() as connection:
        connection.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.id == delivery["id"])
            .where(webhook_deliveries.c.state == "pending")
            .values(**values)
        )
