"""What every page shares: who is asking, CSRF, and answering in HTML or JSON from one dict.

A page handler gets the reviewer already resolved (`request.state.reviewer`); it builds one dict
and `render` turns it into the template's context or the JSON body, so the two never drift.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from smallops.errors import ConfigError, InputError, NotFoundError, SmallopsError
from smallops.jsonl import parse
from smallops.review.desk import ReviewDesk
from smallops.review.queue import DecidedError, HeldError
from smallops.web.auth import (
    SESSION_COOKIE,
    TOKEN_ENV,
    Auth,
    LoginError,
    LoginThrottle,
    PasswordChecks,
    Sessions,
    TooManyFailures,
    is_loopback,
)
from smallops.web.leases import Leases
from smallops.web.outage import Database, DatabaseDown
from smallops.web.pending import PendingCounts

Handler = Callable[[Request], Awaitable[Response]]
MAX_BODY = 1024 * 1024  # bytes a request body may hold: a login, a decision or a correction
BODY_HINT = "send one JSON object (Content-Type: application/json) or a form; nothing was changed"
HEADINGS = {  # the error page's heading for each status
    400: "That could not be done",
    401: "Log in first",
    403: "Not allowed",
    404: "Not found",
    405: "Not found",
    409: "Someone else has it",
    413: "Too large",
    429: "Too many tries",
    500: "Something broke",
    503: "The database is unavailable",
}
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",  # one-click decisions must not be clickjacked
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclasses.dataclass(frozen=True)
class Web:
    """The app's state: the desk and its database, how reviewers are known, the templates, the
    items this server's reviewers hold, and the pending counts it last read."""

    desk: ReviewDesk
    db: Database
    auth: Auth
    sessions: Sessions
    templates: Jinja2Templates
    throttle: LoginThrottle = dataclasses.field(default_factory=LoginThrottle)
    passwords: PasswordChecks = dataclasses.field(default_factory=PasswordChecks)
    leases: Leases = dataclasses.field(default_factory=Leases)
    pending: PendingCounts = dataclasses.field(default_factory=PendingCounts)


def web(request: Request) -> Web:
    state: Web = request.app.state.web
    return state


def reviewer(request: Request) -> str:
    name: str = request.state.reviewer
    return name


def wants_json(request: Request) -> bool:
    """JSON when asked for (`?format=json`, an Accept header naming JSON), posted as JSON, or
    asked by a bearer-token client (a script, never a browser)."""
    if request.query_params.get("format") == "json" or json_body(request):
        return True
    if "authorization" in request.headers:
        return True
    return "application/json" in request.headers.get("accept", "")


def json_body(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip() == "application/json"


class BodyTooLarge(InputError):
    """A request body over the server's limit (a 413), refused before it is read in full."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the request body is larger than this server takes ({_size(limit)})",
            hint="send less: a login, a decision or a correction fits well within that",
        )


def _size(count: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if count >= scale and count % scale == 0:
            return f"{count // scale} {unit}"
    return f"{count} bytes"


async def body(request: Request) -> dict[str, Any]:
    """The posted form or JSON object, as one dict (the JSON client's and the form's fields).

    InputError (a 400, or BodyTooLarge's 413) when it cannot be read: not JSON, not an
    object, a number too long to convert, a malformed form, too large."""
    try:
        if json_body(request):
            data = parse(await request.body(), "the request body")
            if not isinstance(data, dict):
                raise InputError("the request body must be a JSON object", hint=BODY_HINT)
            return data
        form: FormData = await request.form()
    except InputError as exc:
        if exc.hint:
            raise
        raise InputError(exc.message, hint=BODY_HINT) from None
    except ValueError as exc:  # e.g. a number of more digits than Python converts
        reason = str(exc).split(";")[0]
        raise InputError(f"the request body cannot be read: {reason}", hint=BODY_HINT) from None
    except HTTPException as exc:  # Starlette's word on a malformed form
        raise InputError(f"the request body is not a form: {exc.detail}", hint=BODY_HINT) from None
    return {key: value for key, value in form.items() if isinstance(value, str)}


class _Encoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, datetime):
            return o.isoformat()
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        return str(o)


class JSON(JSONResponse):
    """JSON that carries datetimes and decisions as they are recorded."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, cls=_Encoder, ensure_ascii=False).encode()


def render(
    request: Request,
    template: str,
    data: dict[str, Any],
    status: int = 200,
    extra: dict[str, Any] | None = None,
) -> Response:
    """The page's data as JSON, or its template filled with the same data (plus view helpers)."""
    if wants_json(request):
        return JSON(data, status_code=status)
    context = {"request": request, **data, **(extra or {})}
    response = web(request).templates.TemplateResponse(request, template, context, status)
    response.headers.update(HTML_HEADERS)
    return response


def error(request: Request, exc: SmallopsError, status: int | None = None) -> Response:
    """An error as `{"error", "hint"}` JSON (with a DatabaseDown's fields), or a page saying
    it; with the error's headers (Retry-After)."""
    status = status or status_of(exc)
    data = {"error": exc.message, "hint": exc.hint, **getattr(exc, "fields", {})}
    page = {"status_code": status, "heading": HEADINGS.get(status, "Something went wrong")}
    response = render(request, "error.html", data, status, page)
    response.headers.update(getattr(exc, "headers", {}))
    return response


async def no_such_page(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 (a URL or method no route serves) as the app's error page, or
    its JSON."""
    code = exc.status_code if isinstance(exc, HTTPException) else 404
    hint = "the review queue is at /"
    if code == 405:
        what = f"{request.method} is not served at {request.url.path}"
    else:
        what = f"there is no page at {request.url.path}"
    return error(request, NotFoundError(what, hint=hint), code)


def status_of(exc: SmallopsError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, BodyTooLarge):
        return 413
    if isinstance(exc, (HeldError, DecidedError)):
        return 409
    if isinstance(exc, TooManyFailures):
        return 429
    if isinstance(exc, DatabaseDown):
        return 503
    if isinstance(exc, LoginError):
        return 401
    return 400


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def templates(env: Environment) -> Jinja2Templates:
    """Templates that see the reviewer and the CSRF token of the request they render."""

    def identity(request: Request) -> dict[str, Any]:
        cookie = getattr(request.state, "session", None)
        sessions = web(request).sessions
        return {
            "reviewer": getattr(request.state, "reviewer", None),
            "csrf": sessions.csrf_token(cookie) if cookie else "",
            "login": web(request).auth.require_login,
        }

    return Jinja2Templates(env=env, context_processors=[identity])


def guarded(handler: Handler) -> Handler:
    """A page that needs a reviewer: resolve who it is, check CSRF on a POST, then run it."""

    async def page(request: Request) -> Response:
        state = web(request)
        if not state.auth.require_login and not _local_host(request):
            denied = ConfigError("this server answers only to localhost", hint="use 127.0.0.1")
            return error(request, denied, 400)
        if state.auth.require_login and "authorization" in request.headers:
            address = client_address(request)
            try:
                tried = state.throttle.attempt(None, address)
                request.state.reviewer = state.auth.bearer(
                    request.headers["authorization"], request.headers.get("x-reviewer")
                )
            except LoginError as exc:  # TooManyFailures too
                return error(request, exc)
            state.throttle.succeeded(None, address, tried)
            return await handler(request)
        return await _with_session(request, state, handler)

    return page


async def _with_session(request: Request, state: Web, handler: Handler) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    name = state.sessions.reviewer(cookie, credentials=state.auth.credentials)
    fresh = None
    if not state.auth.require_login and name != state.auth.reviewer:
        name, fresh = state.auth.reviewer, state.sessions.issue(state.auth.reviewer)
    if name is None:
        if wants_json(request):
            hint = f"log in at /login, or send Authorization: Bearer with {TOKEN_ENV}'s value"
            return error(request, LoginError("login required", hint=hint))
        return redirect("/login?" + urlencode({"next": request.url.path}))
    request.state.reviewer, request.state.session = name, fresh or cookie
    if request.method == "POST" and not await _csrf_ok(request, state, fresh or cookie):
        stale = LoginError(
            "the form's CSRF token is missing or wrong (a stale page, or not from this site)",
            hint="reload the page and try again; nothing was changed",
        )
        return error(request, stale, 403)
    response = await handler(request)
    if fresh:
        set_session(request, response, fresh, state.sessions.ttl)
    return response


async def _csrf_ok(request: Request, state: Web, cookie: str | None) -> bool:
    """Forms carry the token; a JSON body on a login-free local server needs none (a browser
    cannot send one cross-site without a CORS preflight, which this app never grants)."""
    if json_body(request):
        if not state.auth.require_login:
            return True
        return state.sessions.check_csrf(cookie, request.headers.get("x-csrf-token"))
    token = (await body(request)).get("csrf")  # an unreadable body: InputError, a 400
    return state.sessions.check_csrf(cookie, token)


def set_session(request: Request, response: Response, cookie: str, ttl: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=ttl,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def _local_host(request: Request) -> bool:
    """The Host header names this machine: a login-free server refuses DNS-rebound pages."""
    host = request.headers.get("host", "")
    name = host.rpartition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
    return is_loopback(name)


def client_address(request: Request) -> str | None:
    """The peer's address. Behind a reverse proxy it is the proxy's (every client shares one)
    unless the server was told to trust that proxy's X-Forwarded-For (`smallops serve
    --forwarded-allow-ips`); a header from anyone else is never believed."""
    return request.client.host if request.client else None
