"""Slack on 127.0.0.1: an incoming webhook and the Web API's chat.postMessage, both checking
messages against Block Kit's rules and limits as Slack does.

The webhook answers 200 "ok", 400 "invalid_blocks" / "no_text" / "invalid_payload", or, for a
path it does not know (a revoked webhook), 404 "no_service". chat.postMessage answers 200
{"ok": true, "channel", "ts", "message"} with increasing ts values, or {"ok": false, "error"}:
"invalid_auth" for a token other than its own, "channel_not_found", "invalid_blocks". `script`
lists answers to give first: (status, text, retry_after), e.g. (429, "rate_limited", "30").
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BLOCK_TYPES = ("header", "section", "context", "actions", "divider")
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION = 3000
MAX_FIELDS = 10
MAX_FIELD = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_TEXT = 40000


@dataclass
class Post:
    """A message Slack took: its JSON, and where it went."""

    payload: dict[str, Any]
    channel: str = ""
    ts: str = ""
    thread_ts: str | None = None
    broadcast: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def block_problems(message: Any) -> list[str]:
    """What Slack would refuse in a message's blocks and text; [] when it takes it."""
    if not isinstance(message, dict):
        return ["not an object"]
    problems = []
    text, blocks = message.get("text"), message.get("blocks")
    if not (isinstance(text, str) and text.strip()) and not blocks:
        problems.append("no_text")
    if isinstance(text, str) and len(text) > MAX_TEXT:
        problems.append("msg_too_long")
    if blocks is None:
        return problems
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        return [*problems, f"blocks must be a list of at most {MAX_BLOCKS}"]
    for at, block in enumerate(blocks):
        problems += [f"blocks[{at}]: {p}" for p in _block_problems(block)]
    return problems


def _block_problems(block: Any) -> list[str]:
    if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
        return [f"type must be one of {', '.join(BLOCK_TYPES)}"]
    kind = block["type"]
    if kind == "header":
        return _text_problems(block.get("text"), MAX_HEADER, plain_only=True)
    if kind == "section":
        text, fields = block.get("text"), block.get("fields")
        if text is None and not fields:
            return ["a section needs text or fields"]
        problems = [] if text is None else _text_problems(text, MAX_SECTION)
        if fields is not None:
            if not isinstance(fields, list) or not 0 < len(fields) <= MAX_FIELDS:
                return [*problems, f"fields must be a list of 1 to {MAX_FIELDS}"]
            for field_ in fields:
                problems += _text_problems(field_, MAX_FIELD)
        return problems
    if kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 0 < len(elements) <= MAX_CONTEXT_ELEMENTS:
            return [f"elements must be a list of 1 to {MAX_CONTEXT_ELEMENTS}"]
        problems = []
        for element in elements:
            problems += _text_problems(element, MAX_SECTION)
        return problems
    if kind == "actions":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 0 < len(elements) <= 25:
            return ["elements must be a list of 1 to 25"]
        return []
    return []


def _text_problems(obj: Any, limit: int, *, plain_only: bool = False) -> list[str]:
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if not isinstance(obj, dict) or obj.get("type") not in allowed:
        return [f"a text object of type {' or '.join(allowed)} is needed"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return ["text must not be empty"]
    if len(text) > limit:
        return [f"text is {len(text)} characters, more than {limit}"]
    return []


class SlackFake:
    """`webhook_url` is the incoming webhook (its path a fresh secret), `api_url` the Web API
    root; `token` is the bot token it takes, `channel` the channel it knows."""

    def __init__(
        self, script: list[tuple[int, str, str | None]] | None = None, channel: str = "#ops"
    ) -> None:
        self.script = list(script or [])
        self.token = f"xoxb-fake-{secrets.token_hex(12)}"
        self.channel = channel
        self.hook_path = f"/services/TFAKE/BFAKE/{secrets.token_urlsafe(18)}"
        self.posts: list[Post] = []  # every message it took, by either way in
        self.refused: list[tuple[str, list[str]]] = []  # what it refused, and why
        self._ts = 1_790_000_000_000_000  # microseconds: Slack's ts is seconds.micros
        lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with lock:
                    if fake.script:
                        status, text, retry_after = fake.script.pop(0)
                        if self.path.endswith("/chat.postMessage"):
                            text = json.dumps({"ok": False, "error": text})
                        self._send(status, text, retry_after)
                        return
                    if self.path == fake.hook_path:
                        status, text = fake._webhook(body, headers)
                    elif self.path == "/api/chat.postMessage":
                        status, text = 200, json.dumps(fake._post_message(body, headers))
                    else:
                        status, text = 404, "no_service"
                self._send(status, text)

            def _send(self, status: int, text: str, retry_after: str | None = None) -> None:
                raw = text.encode()
                self.send_response(status)
                kind = "application/json" if text.startswith("{") else "text/html"
                self.send_header("Content-Type", f"{kind}; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        root = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.webhook_url = root + self.hook_path
        self.api_url = f"{root}/api"

    def _webhook(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        try:
            message = json.loads(body)
        except ValueError:
            return 400, "invalid_payload"
        problems = block_problems(message)
        if problems:
            self.refused.append(("webhook", problems))
            return 400, "no_text" if problems == ["no_text"] else "invalid_blocks"
        self.posts.append(Post(message, headers=headers))
        return 200, "ok"

    def _post_message(self, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        if headers.get("authorization") != f"Bearer {self.token}":
            return {"ok": False, "error": "invalid_auth"}
        try:
            message = json.loads(body)
        except ValueError:
            return {"ok": False, "error": "invalid_json"}
        if not isinstance(message, dict) or message.get("channel") != self.channel:
            return {"ok": False, "error": "channel_not_found"}
        problems = block_problems(message)
        if problems:
            self.refused.append(("chat.postMessage", problems))
            return {
                "ok": False,
                "error": "no_text" if problems == ["no_text"] else "invalid_blocks",
            }
        thread_ts = message.get("thread_ts")
        self._ts += 100
        ts = f"{self._ts // 1_000_000}.{self._ts % 1_000_000:06d}"
        self.posts.append(
            Post(
                message, self.channel, ts, thread_ts, bool(message.get("reply_broadcast")), headers
            )
        )
        return {"ok": True, "channel": "CFAKE0001", "ts": ts, "message": {"text": message["text"]}}

    def __enter__(self) -> SlackFake:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
