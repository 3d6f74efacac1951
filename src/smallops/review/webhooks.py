"""Decisions delivered to a URL as Standard Webhooks (webhook-id, -timestamp, -signature).

Each decision writes one outbox row in its own transaction, so a decision is never without its
delivery. Deliveries are sent until the receiver answers 2xx, with backoff, under a lease so two
senders never send the same one at once; once delivered, a delivery is never sent again. Its id
is the `webhook-id` of every attempt, so a receiver can drop a retry it already processed.
Redirects are never followed: a 3xx is a failed attempt like any other non-2xx answer, since
following one would count a body-less GET elsewhere as the delivery.

Each delivery is signed with the secret of the workflow whose decision it carries (found through
its run's review item); `signing_secrets` is the one place a secret is read. A sender claims one
delivery at a time, and gives back the lease of one it could not finish before its process exits,
so a short-lived process (the CLI) never holds up a delivery that another sender could send now.

The signature is `v1,` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")); a `whsec_` secret
is base64 after the prefix, as in the Standard Webhooks specification.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import hashlib
import hmac
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from smallops.ids import uuid7
from smallops.storage import webhook_log
from smallops.storage.db import write_transaction
from smallops.storage.health import first_line

if TYPE_CHECKING:
    from smallops.storage.db import Connection, Engine
    from smallops.workflow import Workflow

DEFAULT_SECRET_ENV = "SMALLOPS_WEBHOOK_SECRET"
TOLERANCE = 300  # seconds a receiver accepts between the timestamp and its clock
LEASE = timedelta(seconds=60)
MAX_BACKOFF = 3600.0
SECRET_HINT = "set it to whsec_ and the base64 of at least 24 random bytes"
log = logging.getLogger("smallops")


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
    webhook_log.add_delivery(
        connection,
        {
            "id": message_id,
            "run_id": decision["run_id"],
            "url": url,
            "payload": body,
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        },
    )
    return message_id


def signing_secrets(
    workflows: Iterable[Workflow[Any]],
) -> tuple[dict[str, str], dict[str, str]]:
    """The secret each workflow that sends webhooks signs them with, by workflow name; and, for
    each whose secret is missing or malformed, what is wrong (the variable's name, never a value).
    """
    secrets: dict[str, str] = {}
    problems: dict[str, str] = {}
    for workflow in workflows:
        if not workflow.webhook:
            continue
        name = workflow.webhook_secret_env
        secret = os.environ.get(name, "")
        if not secret:
            problems[workflow.name] = f"{name} is not set"
        elif not _usable(secret):
            problems[workflow.name] = f"{name} is not a whsec_ secret (base64 after the prefix)"
        else:
            secrets[workflow.name] = secret
    return secrets, problems


def _usable(secret: str) -> bool:
    try:
        return bool(secret_key(secret))
    except (binascii.Error, ValueError):
        return False


def deliver_due(
    engine: Engine,
    secrets: Mapping[str, str],
    *,
    limit: int = 20,
    timeout: float = 10.0,
    run_id: str | None = None,
    stop: threading.Event | None = None,
) -> tuple[int, int]:
    """Send up to `limit` due deliveries, one claim at a time, each signed with the secret of its
    own workflow (`secrets`: workflow name -> secret, from `signing_secrets`); deliveries of other
    workflows are left to a sender that has their secret. With `run_id`, only that run's. Once
    `stop` is set, nothing more is claimed or sent. Returns (delivered, failed this round)."""
    delivered = failed = 0
    for _ in range(limit):
        if stop is not None and stop.is_set():
            break
        delivery = _claim_next(engine, secrets, run_id)
        if delivery is None:
            break
        if stop is not None and stop.is_set():  # given up on while claiming it
            give_back(engine, [delivery["run_id"]])
            break
        try:
            error = _post(delivery, secrets[delivery["workflow"]], timeout)
        except BaseException:  # interrupted mid-send: another sender may send it now
            give_back(engine, [delivery["run_id"]])
            raise
        _settle(engine, delivery, error)
        if error is None:
            delivered += 1
        else:
            failed += 1
    return delivered, failed


def waiting(engine: Engine) -> dict[str, int]:
    """Deliveries not yet delivered, by the workflow whose decision they carry."""
    return webhook_log.waiting_per_workflow(engine)


class _Claim(NamedTuple):
    engine: Engine
    run_id: str
    until: datetime


_held: dict[str, _Claim] = {}  # deliveries this process claimed and has not settled, by id
_held_lock = threading.Lock()


def give_back(engine: Engine | None = None, run_ids: Collection[str] | None = None) -> int:
    """Clear this process's leases on deliveries it claimed and has not settled (all of them, or
    those on `engine` of `run_ids`), so that another sender can send them at once. A lease that
    has since passed to another sender is left alone. Returns how many were given back."""
    with _held_lock:
        chosen = {
            delivery: claim
            for delivery, claim in _held.items()
            if (engine is None or claim.engine is engine)
            and (run_ids is None or claim.run_id in run_ids)
        }
        for delivery in chosen:
            del _held[delivery]
    given = 0
    for delivery, claim in chosen.items():
        given += webhook_log.release_lease(claim.engine, delivery, claim.until)
    return given


@atexit.register
def _give_back_at_exit() -> None:
    """A process that exits mid-send (its sending thread dies with it) holds no lease after."""
    try:
        give_back()
    except Exception as exc:  # the lease then expires on its own
        log.warning("smallops: could not give back the webhook leases: %s", first_line(exc))


def _claim_next(
    engine: Engine, workflows: Collection[str], run_id: str | None
) -> dict[str, Any] | None:
    """Lease the next due delivery of one of `workflows`, with its workflow's name."""
    now = datetime.now(timezone.utc)
    until = now + LEASE
    with write_transaction(engine) as connection:
        delivery = webhook_log.claim_due(connection, workflows, run_id, now, until)
        if delivery is None:
            return None
    with _held_lock:
        _held[delivery["id"]] = _Claim(engine, delivery["run_id"], until)
    return delivery


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
    except (ValueError, http.client.HTTPException) as exc:  # a URL it cannot send to, or
        return f"{type(exc).__name__}: {exc}"  # an answer that is not HTTP: a failed attempt
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
    webhook_log.settle_delivery(engine, delivery["id"], values)
    with _held_lock:
        _held.pop(delivery["id"], None)
