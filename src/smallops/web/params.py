"""The values a page takes from its address (and the form fields it filters by), checked in one
place before any page uses them.

A value with a control character (a NUL above all: Postgres refuses one in text, so it failed
deep inside a query as a 500) or longer than MAX_CHARS is no name, id, filter or cursor that any
page takes. In the query (or a form) it is a 400; in the path it names nothing, a 404. Either
is said in one line that repeats at most SHOWN characters of it. Parameters a page does not read
(a tracking tag, `format=json`) are never looked at. `EscapedQuery` first percent-escapes any
raw byte past ASCII in the query string, as a browser would have sent it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from smallops.errors import InputError, NotFoundError

#: The longest value a page takes: far beyond any workflow name, id, cursor or search.
MAX_CHARS = 200
#: The characters of a refused value an error message repeats.
SHOWN = 60
# C0 controls, DEL, and lone surrogates (which no text encoding can carry to a database).
_UNFIT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_RAW = re.compile(rb"[\x80-\xff]")


def problem(value: str) -> str | None:
    """Why no page can take `value` ("holds a NUL character"), or None if it is plain text."""
    if len(value) > MAX_CHARS:
        return f"is {len(value):,} characters long; at most {MAX_CHARS} are taken"
    found = _UNFIT.search(value)
    if found is None:
        return None
    code = ord(found.group())
    return "holds a NUL character" if code == 0 else f"holds the control character U+{code:04X}"


def shown(value: str) -> str:
    """`value` as an error message repeats it: quoted, escaped, cut to SHOWN characters."""
    cut = value[:SHOWN]
    return repr(cut) + ("…" if len(value) > SHOWN else "")


def checked(value: str | None, label: str) -> str | None:
    """`value` (None when empty); InputError naming `label` for one no page can take."""
    if not value:
        return None
    why = problem(value)
    if why is not None:
        raise InputError(f"{label} {why}", hint=f"leave out {label}, or give it as plain text")
    return value


def query(request: Request, name: str, label: str | None = None) -> str | None:
    """The query parameter `name` as given, None when absent or empty; InputError (a 400) for a
    value no page can take, naming it as `label` (default "?name=")."""
    return checked(request.query_params.get(name), label or f"?{name}=")


def form_text(form: Mapping[str, Any], name: str) -> str | None:
    """A posted field a page filters by (a workflow), as `query` checks a parameter."""
    value = form.get(name)
    return checked(value if isinstance(value, str) else None, f"the form's {name}")


def path(request: Request, name: str, what: str, hint: str) -> str:
    """The path parameter `name`; NotFoundError (a 404) for one that names nothing because no
    `what` (e.g. "eval run") can have it as its name or id."""
    value: str = request.path_params[name]
    if problem(value) is not None:
        raise NotFoundError(f"there is no {what} {shown(value)}", hint=hint)
    return value


class EscapedQuery:
    """uvicorn refuses a request whose query holds raw bytes past ASCII, but another server (or
    a proxy) may pass them on, and Starlette reads the query as strict UTF-8 wherever a page
    asks for its URL: a 500. Escaped, `%ff` is read as U+FFFD, plain text like any other."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query: bytes = scope.get("query_string", b"")
        if scope["type"] == "http" and not query.isascii():
            escaped = _RAW.sub(lambda byte: b"%%%02X" % byte.group()[0], query)
            scope = {**scope, "query_string": escaped}
        await self.app(scope, receive, send)
