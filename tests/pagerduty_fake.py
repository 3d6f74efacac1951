"""A PagerDuty Events API v2 endpoint on 127.0.0.1 that checks events as the real one does and
keeps the incidents they open, acknowledge and resolve.

It answers 202 {"status": "success", "message": "Event processed", "dedup_key": ...} for an
event it takes and 400 {"status": "invalid event", "message": ..., "errors": [...]} for one it
never will. `script` lists answers to give first, whatever comes (a 500, a 429 with a
Retry-After, a body of one's choosing; NORMAL for its usual answer), before it answers normally.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_BODY = 512 * 1024
MAX_DEDUP_KEY = 255
MAX_SUMMARY = 1024
PATH = "/v2/enqueue"


@dataclass
class Answer:
    """A scripted answer: a status, its Retry-After, a body (JSON of the status by default).
    Status 0 is the answer the fake would give anyway: a turn taken in the script."""

    status: int
    retry_after: str | None = None
    body: str | None = None


NORMAL = Answer(0)


@dataclass
class Incident:
    routing_key: str
    dedup_key: str
    summary: str
    severity: str
    status: str = "triggered"  # then "acknowledged", "resolved"
    triggers: int = 1  # how many trigger events it took (the rest were deduplicated)
    log: list[str] = field(default_factory=list)  # the event actions it saw


def problems(event: Any) -> list[str]:
    """What the Events API v2 would refuse in this event, in its words; [] when it is valid."""
    if not isinstance(event, dict):
        return ["Event object is not a JSON object"]
    errors = []
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = event.get("event_action")
    if action not in ACTIONS:
        errors.append("'event_action' is missing or invalid")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > MAX_DEDUP_KEY):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append("'dedup_key' is missing or blank")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return [*errors, "'payload' is missing or not an object"]
        summary = payload.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors.append("'payload.summary' is missing or blank")
        elif len(summary) > MAX_SUMMARY:
            errors.append("'payload.summary' is longer than 1024 characters")
        source = payload.get("source")
        if not isinstance(source, str) or not source.strip():
            errors.append("'payload.source' is missing or blank")
        if payload.get("severity") not in SEVERITIES:
            errors.append("'payload.severity' is missing or blank or invalid")
        details = payload.get("custom_details")
        if details is not None and not isinstance(details, dict):
            errors.append("'payload.custom_details' must be an object")
        for name in ("timestamp", "component", "group", "class"):
            if name in payload and not isinstance(payload[name], str):
                errors.append(f"'payload.{name}' must be a string")
        links = event.get("links", [])
        if not isinstance(links, list) or not all(
            isinstance(link, dict) and isinstance(link.get("href"), str) for link in links
        ):
            errors.append("'links' must be a list of objects with an href")
    return errors


class PagerDutyFake:
    """The endpoint is `url`; `events` keeps every event it took, `incidents` what they did."""

    def __init__(self, script: list[Answer] | None = None) -> None:
        self.script = list(script or [])
        self.events: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []  # every body that reached it, taken or not
        self.incidents: list[Incident] = []
        lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with lock:
                    fake.bodies.append(body)
                    scripted = fake.script.pop(0) if fake.script else None
                    if scripted is not None and scripted.status:
                        self._answer_scripted(scripted)
                        return
                    status, answer = fake._take(self.path, self.headers, body)
                self._send(status, json.dumps(answer))

            def _answer_scripted(self, answer: Answer) -> None:
                text = answer.body
                if text is None:
                    text = json.dumps({"status": "scripted", "message": f"HTTP {answer.status}"})
                headers = {"Retry-After": answer.retry_after} if answer.retry_after else {}
                self._send(answer.status, text, headers)

            def _send(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
                raw = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{PATH}"

    def _take(self, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        if path != PATH:
            return 404, {"status": "not found", "message": "Not found"}
        if len(body) > MAX_BODY:
            return self._invalid(["Event object is larger than 512 KB"])
        if "application/json" not in (headers.get("content-type") or ""):
            return self._invalid(["Content-Type must be application/json"])
        try:
            event = json.loads(body)
        except ValueError:
            return 400, {"status": "invalid event", "message": "Malformed JSON", "errors": []}
        errors = problems(event)
        if errors:
            return self._invalid(errors)
        self.events.append(event)
        key = event.get("dedup_key") or uuid.uuid4().hex
        self._apply(event, key)
        return 202, {"status": "success", "message": "Event processed", "dedup_key": key}

    def _apply(self, event: dict[str, Any], key: str) -> None:
        action = event["event_action"]
        incident = self.incident(key, routing_key=event["routing_key"], open_only=True)
        if action == "trigger":
            if incident is None:
                payload = event["payload"]
                incident = Incident(
                    event["routing_key"], key, payload["summary"], payload["severity"]
                )
                self.incidents.append(incident)
            else:
                incident.triggers += 1
        elif incident is not None:  # PagerDuty takes an ack or resolve of nothing, and drops it
            incident.status = "acknowledged" if action == "acknowledge" else "resolved"
        if incident is not None:
            incident.log.append(action)

    @staticmethod
    def _invalid(errors: list[str]) -> tuple[int, dict[str, Any]]:
        return 400, {
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": errors,
        }

    def incident(
        self, dedup_key: str, *, routing_key: str | None = None, open_only: bool = False
    ) -> Incident | None:
        """The latest incident under the key (a resolved key can open a new one)."""
        for incident in reversed(self.incidents):
            if incident.dedup_key != dedup_key:
                continue
            if routing_key is not None and incident.routing_key != routing_key:
                continue
            if open_only and incident.status == "resolved":
                continue
            return incident
        return None

    def open_incidents(self) -> list[Incident]:
        return [incident for incident in self.incidents if incident.status != "resolved"]

    def __enter__(self) -> PagerDutyFake:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
