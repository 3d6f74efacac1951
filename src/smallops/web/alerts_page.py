"""Alerts in the web UI: acknowledging one (`POST /alerts/{id}/ack`), the open ones the
overview shows, and PagerDuty's word that someone acknowledged an incident
(`POST /alerts/pagerduty`, a PagerDuty v3 webhook).

The PagerDuty receiver is off unless SMALLOPS_PAGERDUTY_WEBHOOK_SECRET holds the subscription's
signing secret; every request must carry a valid `X-PagerDuty-Signature` (v1=HMAC-SHA256 of the
body), so nobody else can acknowledge an alert through it. It needs no login: PagerDuty has none.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from smallops.alerts.engine import acknowledge, acknowledge_key
from smallops.errors import InputError, NotFoundError, SmallopsError
from smallops.storage.alert_log import recent_alerts
from smallops.web import params
from smallops.web._http import JSON, error, guarded, redirect, reviewer, wants_json, web

PAGERDUTY_SECRET_ENV = "SMALLOPS_PAGERDUTY_WEBHOOK_SECRET"
MAX_SHOWN = 50


def open_alerts(engine: Any) -> list[dict[str, Any]]:
    """The open alerts, newest first, as the overview shows them."""
    now = datetime.now(timezone.utc)
    shown = []
    for alert in recent_alerts(engine, include_resolved=False, limit=MAX_SHOWN):
        fired = alert["fired_at"]
        fired = fired if fired.tzinfo else fired.replace(tzinfo=timezone.utc)
        shown.append(
            {
                "id": alert["id"],
                "state": alert["state"],
                "severity": alert["severity"],
                "workflow": alert["workflow"],
                "rule": alert["rule"],
                "summary": alert["summary"],
                "fired_at": fired,
                "age_s": int((now - fired).total_seconds()),
                "acknowledged_by": alert["acknowledged_by"],
            }
        )
    return shown


@guarded
async def ack(request: Request) -> Response:
    """Acknowledge an alert as this reviewer; back to the overview (JSON: the alert)."""
    state = web(request)
    try:
        alert_id = params.path(
            request, "alert_id", "alert", "the overview at /dashboard lists them"
        )
        alert = await state.db.save(acknowledge, state.desk.engine, alert_id, reviewer(request))
    except SmallopsError as exc:
        return error(request, exc)
    if wants_json(request):
        return JSON({"alert": {k: alert[k] for k in ("id", "state", "acknowledged_by")}})
    return redirect("/dashboard#alerts")


async def pagerduty(request: Request) -> Response:
    """A PagerDuty v3 webhook: `incident.acknowledged` acknowledges the alert whose dedup key
    is the incident's key. Anything else is taken (202) and ignored."""
    secret = os.environ.get(PAGERDUTY_SECRET_ENV, "")
    if not secret:
        missing = NotFoundError(
            "the PagerDuty webhook receiver is off",
            hint=f"set {PAGERDUTY_SECRET_ENV} to the subscription's signing secret",
        )
        return error(request, missing)
    body = await request.body()
    if not _signed(secret, body, request.headers.get("x-pagerduty-signature", "")):
        return JSONResponse({"error": "bad or missing X-PagerDuty-Signature"}, status_code=401)
    try:
        event = json.loads(body).get("event") or {}
        kind = event.get("event_type")
        key = (event.get("data") or {}).get("incident_key")
        agent = ((event.get("agent") or {}).get("summary")) or "someone"
        occurred_at = _moment(event.get("occurred_at"))
    except (ValueError, AttributeError):
        return error(request, InputError("the body is not a PagerDuty v3 webhook event"))
    if kind != "incident.acknowledged" or not isinstance(key, str):
        return JSONResponse({"ignored": kind}, status_code=202)
    by = f"PagerDuty: {str(agent)[:100]}"
    state = web(request)
    found = await state.db.save(
        acknowledge_key, state.desk.engine, key, by, occurred_at=occurred_at
    )
    return JSONResponse({"acknowledged": found["id"] if found else None}, status_code=202)


def _moment(value: Any) -> datetime | None:
    """When PagerDuty says the acknowledgement happened (ISO 8601, "Z" for UTC); None if not
    given. ValueError for a time that is not one."""
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _signed(secret: str, body: bytes, header: str) -> bool:
    """Whether one of the header's `v1=` signatures is HMAC-SHA256(secret, body) in hex."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    given = [part.strip()[3:] for part in header.split(",") if part.strip().startswith("v1=")]
    return any(hmac.compare_digest(expected, signature) for signature in given)
