"""One HTTP POST to a channel's service, its answer sorted into Sent, Retry or Refused.

2xx is sent. 429 and 5xx are worth retrying, with the Retry-After the service gave (seconds or
an HTTP date). Any other 4xx is refused for good: the request will not get better by being sent
again. A 3xx is refused too: the configured URL is not the service's, and following a redirect
would send the alert somewhere nobody named. No answer (refused, timed out) is retried.
The detail never repeats the URL: a Slack webhook URL is itself a secret.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from smallops.alerts.channels._deadline import Deadline
from smallops.alerts.model import Outcome, Refused, Retry, Sent

TIMEOUT = 10.0  # seconds each step (connecting, a read) may take; the attempt: _deadline
MAX_DETAIL = 300  # characters of a service's answer kept
MAX_ANSWER = 1 << 20  # bytes of an answer read: Slack's longest (the message echoed) fits


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _HTTPConnection(http.client.HTTPConnection):
    """A connection whose socket the attempt's deadline watches."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _watched(deadline)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _watched(deadline)


def _watched(deadline: Deadline) -> Callable[..., socket.socket]:
    def connect(*args: Any) -> socket.socket:
        return deadline.watch(socket.create_connection(*args))

    return connect


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, deadline=self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self.deadline), req)


def _opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        _RefuseRedirects, _HTTPHandler(deadline), _HTTPSHandler(deadline)
    )


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float = TIMEOUT,
    accepted: Callable[[int, str], Outcome | None] | None = None,
) -> Outcome:
    """POST `body`; `accepted(status, text)` may look at a 2xx answer (its first MAX_ANSWER
    bytes: an endless one is not read to its end) and say otherwise (Slack's Web API answers
    200 with "ok": false, and the message it posted after the ts)."""
    with Deadline() as deadline:
        return _post(url, body, headers, timeout, accepted, deadline)


def _post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
    accepted: Callable[[int, str], Outcome | None] | None,
    deadline: Deadline,
) -> Outcome:
    try:
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        with _opener(deadline).open(request, timeout=timeout) as answer:
            status, raw = answer.status, answer.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        status, text = exc.code, shown(exc.read(MAX_ANSWER) if exc.fp else b"")
        if deadline.over:
            return Retry(deadline.detail())
        detail = f"HTTP {status}: {text}".rstrip(": ")
        if status == 429 or status >= 500:
            return Retry(detail, retry_after(exc.headers.get("Retry-After")))
        return Refused(detail)
    except (http.client.InvalidURL, ValueError):  # their text quotes the URL or the header
        return Retry(
            "the request cannot be made: the URL or a secret holds a space, a control character"
            " or a bad host"
        )
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        if deadline.over:
            return Retry(deadline.detail())
        reason = getattr(exc, "reason", exc)
        return Retry(f"no answer: {shown(str(reason))}".rstrip(": "))
    if deadline.over:  # cut short: what was read of the answer may look whole, and is not
        return Retry(deadline.detail())
    if accepted is not None:
        verdict = accepted(status, raw.decode("utf-8", "replace"))
        if verdict is not None:
            return verdict
    return Sent(f"HTTP {status}: {shown(raw)}".rstrip(": "))


def post_json(
    url: str,
    payload: Any,
    headers: Mapping[str, str] | None = None,
    *,
    accepted: Callable[[int, str], Outcome | None] | None = None,
) -> Outcome:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    return post(url, body, headers, accepted=accepted)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def shown(raw: bytes | str) -> str:
    """One line (a status line of garbage too), at most MAX_DETAIL characters."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.replace("\x00", " ").split())
    return text[:MAX_DETAIL]
