"""`GET/POST /login` and `POST /logout`.

The login form is CSRF-protected too, before there is a session: GET sets a random nonce cookie
and the form carries the token derived from it, so another site cannot log a reviewer in under
a name of its choosing.
"""

from __future__ import annotations

import functools
import secrets

from starlette.requests import Request
from starlette.responses import Response

from smallops.errors import InputError, SmallopsError
from smallops.web._http import (
    JSON,
    body,
    client_address,
    error,
    guarded,
    json_body,
    redirect,
    render,
    set_session,
    wants_json,
    web,
)
from smallops.web.auth import SESSION_COOKIE, LoginError, TooManyFailures

NONCE_COOKIE = "smallops_login"


async def login_page(request: Request) -> Response:
    """The login form; with no login required, straight to the queue."""
    state = web(request)
    if not state.auth.require_login:
        return redirect("/")
    if request.method == "POST":
        return await _log_in(request)
    return _form(request, problem=None, name="", target=request.query_params.get("next") or "/")


async def _log_in(request: Request) -> Response:
    state = web(request)
    try:
        form = await body(request)
    except InputError as exc:  # unreadable, or too large
        return error(request, exc)
    nonce = request.cookies.get(NONCE_COOKIE)
    given, target = str(form.get("name") or ""), str(form.get("next") or "/")
    if not json_body(request) and not state.sessions.check_csrf(
        f"login:{nonce}" if nonce else None, str(form.get("csrf") or "")
    ):
        stale = LoginError("the login form expired", hint="reload the page and log in again")
        return _form(request, problem=stale, name=given, target=target, status=403)
    address = client_address(request)
    try:
        tried = state.throttle.attempt(given, address)  # counted before the check
    except TooManyFailures as exc:
        if wants_json(request):
            return error(request, exc)
        refused = _form(request, problem=exc, name=given, target=target, status=429)
        refused.headers.update(exc.headers)
        return refused
    password = str(form.get("password") or "")
    session = await state.passwords.run(functools.partial(state.auth.login, given, password))
    if session is None:
        wrong = LoginError("wrong name or password", hint="ask whoever runs smallops serve")
        if wants_json(request):
            return error(request, wrong)
        return _form(request, problem=wrong, name=given, target=target, status=401)
    state.throttle.succeeded(given, address, tried)
    name, credential = session
    cookie = state.sessions.issue(name, credential=credential)
    if wants_json(request):
        response: Response = JSON({"reviewer": name, "csrf": state.sessions.csrf_token(cookie)})
    else:
        response = redirect(_safe_next(target))
    set_session(request, response, cookie, state.sessions.ttl)
    response.delete_cookie(NONCE_COOKIE)
    return response


@guarded
async def logout(request: Request) -> Response:
    """End the session (the cookie is dropped; it was the only record of it)."""
    response = JSON({"reviewer": None}) if wants_json(request) else redirect("/login")
    response.delete_cookie(SESSION_COOKIE)
    return response


def _form(
    request: Request,
    *,
    problem: SmallopsError | None,
    name: str,
    target: str,
    status: int = 200,
) -> Response:
    """The form, with a fresh nonce cookie and the CSRF token bound to it."""
    state = web(request)
    nonce = secrets.token_urlsafe(16)
    data = {
        "error": problem.message if problem else None,
        "hint": problem.hint if problem else None,
        "login_required": True,
    }
    extra = {
        "login_csrf": state.sessions.csrf_token(f"login:{nonce}"),
        "name": name,
        "next": _safe_next(target),
    }
    response = render(request, "login.html", data, status, extra)
    response.set_cookie(NONCE_COOKIE, nonce, max_age=3600, httponly=True, samesite="lax")
    return response


def _safe_next(target: str) -> str:
    """Only a path on this site: never an open redirect to another one."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
