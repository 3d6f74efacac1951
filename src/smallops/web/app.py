"""`create_app`: the review UI as a Starlette app over a ReviewDesk.

It takes the desk and the settings rather than a project folder, so tests (and applications that
embed the review queue) build it from whatever engine and workflows they already have. While it
runs it sends due webhooks (if asked); when it stops it gives back the items its reviewers hold.
A request body over `max_body` bytes is a 413 before anything reads it or asks who is sending
it; one that cannot be read, a 400. A database outage is a 503 in the page's format, logged once;
any other failure a 500 in the page's format, with its traceback in the server log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smallops.config import Settings
from smallops.errors import InputError, SmallopsError
from smallops.review import webhooks
from smallops.review.desk import ReviewDesk
from smallops.storage.health import DatabaseError, first_line, unreachable
from smallops.web import (
    alerts_page,
    doctor_page,
    evals_page,
    item_page,
    login,
    metrics,
    overview_page,
    queue_page,
    runs_page,
    workflow_page,
)
from smallops.web._http import (
    MAX_BODY,
    BodyTooLarge,
    Web,
    error,
    no_such_page,
    templates,
    web,
)
from smallops.web.auth import Auth, Sessions, load_secret_key
from smallops.web.leases import give_back
from smallops.web.outage import Database, DatabaseDown
from smallops.web.params import EscapedQuery

HERE = Path(__file__).parent
DB_TIMEOUT = 5.0  # seconds a Postgres call may go unanswered before it is cut
GIVE_BACK_WITHIN = 5.0  # seconds to give back the held items when the server stops
log = logging.getLogger("smallops")


def create_app(
    desk: ReviewDesk,
    settings: Settings,
    *,
    require_login: bool,
    reviewer: str | None = None,
    secret_key: bytes | None = None,
    env: Mapping[str, str] | None = None,
    webhook_interval: float | None = None,
    alert_interval: float | None = None,
    db_timeout: float | None = DB_TIMEOUT,
    max_body: int = MAX_BODY,
) -> Starlette:
    """The review UI and its JSON API.

    `reviewer` names who decides when no login is required (default: SMALLOPS_REVIEWER or the
    OS user). `secret_key` signs sessions (default: SMALLOPS_SECRET_KEY, or a key kept in the
    project's .smallops folder). With `webhook_interval`, due decision webhooks are sent every
    that many seconds while the app runs; with `alert_interval`, the alert rules are checked
    and due alert messages sent every that many seconds (`smallops alerts check`). On
    Postgres, a database call that gets no answer within `db_timeout` seconds is cut (None:
    never). A request body over `max_body` bytes is
    refused with a 413. Raises ConfigError if login is required and no reviewer could log in.

    The login throttle counts per client address as the ASGI server reports it: serve it
    without trusting X-Forwarded-For (uvicorn's `proxy_headers=False`) unless a named proxy
    sets it, as `smallops serve` does.
    """
    auth = Auth.for_server(
        settings.reviewers, require_login=require_login, reviewer=reviewer, env=env
    )
    key = secret_key or load_secret_key(settings.state_dir, env)
    jinja = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        auto_reload=False,  # the templates ship with the package: no stat() per page
    )
    routes = [
        Route("/", queue_page.queue_page),
        Route("/next", queue_page.next_item, methods=["POST"]),
        Route("/items/{run_id}", item_page.item_page),
        Route("/items/{run_id}/claim", item_page.claim, methods=["POST"]),
        Route("/items/{run_id}/{action}", item_page.act, methods=["POST"]),
        Route("/evals", evals_page.evals_page),
        Route("/evals/compare", evals_page.compare_page),
        Route("/evals/{eval_run_id}", evals_page.eval_run_page),
        Route("/runs", runs_page.runs_page),
        Route("/runs/{run_id}", runs_page.run_page),
        Route("/dashboard", overview_page.overview_page),
        Route("/doctor", doctor_page.doctor_page),
        Route("/metrics", metrics.metrics_page),
        Route("/alerts/pagerduty", alerts_page.pagerduty, methods=["POST"]),
        Route("/alerts/{alert_id}/ack", alerts_page.ack, methods=["POST"]),
        Route("/workflows/{name:path}", workflow_page.workflow_page),
        Route("/login", login.login_page, methods=["GET", "POST"]),
        Route("/logout", login.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    state = Web(desk, Database(desk.engine, db_timeout), auth, Sessions(key), templates(jinja))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(EscapedQuery),
            Middleware(_LimitBody, limit=max_body),
            Middleware(_AnswerWhenCancelled),
        ],
        lifespan=_lifespan(state, webhook_interval, alert_interval, settings, env),
        exception_handlers={
            404: no_such_page,
            405: no_such_page,
            InputError: _bad_request,
            DatabaseDown: _database_down,
            DatabaseError: _database_error,
            Exception: _server_error,
        },
    )
    app.state.web = state
    app.state.settings = settings
    app.state.metrics = metrics.Metrics(desk)
    return app


def _lifespan(
    state: Web,
    webhook_interval: float | None,
    alert_interval: float | None,
    settings: Settings,
    env: Mapping[str, str] | None,
) -> Any:
    """Send due webhooks and check the alerts in the background while the app serves; on the
    way out, give back the items its reviewers hold and stop the password checks' threads."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        tasks = []
        if webhook_interval:
            tasks.append(asyncio.create_task(_send_webhooks(state, webhook_interval)))
        if alert_interval:
            environment = dict(os.environ if env is None else env)
            work = _check_alerts(state, settings, environment, alert_interval)
            tasks.append(asyncio.create_task(work))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await give_back(state.desk, state.leases, GIVE_BACK_WITHIN)
            state.passwords.close()

    return lifespan


async def _send_webhooks(state: Web, interval: float) -> None:
    """Every `interval` seconds, send what is due; an outage is logged once, not every round."""
    send = webhook_sender(state.desk)
    while True:
        try:
            await state.db.call(send)
        except DatabaseDown:
            pass  # logged once by the database's health
        except Exception as exc:  # the network hiccupped: next round
            log.warning("smallops: webhook delivery failed: %s", first_line(exc))
        await asyncio.sleep(interval)


async def _check_alerts(
    state: Web, settings: Settings, env: Mapping[str, str], interval: float
) -> None:
    """Every `interval` seconds, one round of `smallops alerts check`, in a daemon thread of its
    own: a channel that stalls (each send waits up to 10 s) never holds up a page's database
    work, nor the server's exit (a message cut short there is sent again by the next sender
    once its lease ends, with the same id). A failed round is logged; the next one tries again."""
    from smallops.alerts.check import check_once

    def round_() -> None:
        done = check_once(state.desk.engine, state.desk.workflows, settings, env)
        for problem in done.changes.problems:
            log.warning("smallops: alert rule not checked: %s", problem)

    while True:
        try:
            await _in_daemon_thread(round_)
        except Exception as exc:
            log.warning("smallops: alert check failed: %s", first_line(exc))
        await asyncio.sleep(interval)


async def _in_daemon_thread(work: Callable[[], None]) -> None:
    """`work()` in a daemon thread, awaited; the process may exit while it runs."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not finished.done():
            if error is None:
                finished.set_result(None)
            else:
                finished.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            work()
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="smallops-alerts", daemon=True).start()
    await finished


async def _bad_request(request: Request, exc: Exception) -> Response:
    """A body that could not be read (or is too large) and that no page answered itself."""
    assert isinstance(exc, InputError)
    return error(request, exc)


async def _database_down(request: Request, exc: Exception) -> Response:
    """A page's `Database.call` found the database unreachable: a 503."""
    return error(request, exc if isinstance(exc, DatabaseDown) else DatabaseDown())


async def _database_error(request: Request, exc: Exception) -> Response:
    """A database error that escaped `Database.call`: a 503 if it is an outage."""
    if not unreachable(exc):
        raise exc  # a bug: a 500, with its traceback in the log
    web(request).db.failed(exc)
    return error(request, DatabaseDown())


async def _server_error(request: Request, exc: Exception) -> Response:
    """Anything else: a 500 in the page's format (Starlette still logs the traceback)."""
    failed = SmallopsError("the server failed to answer this request", hint="see the server log")
    return error(request, failed, 500)


class _LimitBody:
    """Refuse a request body over `limit` bytes with a 413: at once when its Content-Length
    says so, before anything reads it or asks who is sending it; otherwise (a chunked body)
    as soon as the bytes read pass the limit. What is not read is never held in memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _content_length(scope) > self.limit:
            await error(Request(scope), BodyTooLarge(self.limit))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.limit)  # a 413 from the page, or `_bad_request`
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int:
    """The Content-Length the request declares (0 if none or not a number)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


class _AnswerWhenCancelled:
    """A request still waiting on the database when a stopping server's grace runs out is
    cancelled: answer it with a 503 that says so, rather than uvicorn's bare 500 and a traceback
    in the log. Its database work may still finish, so whether a decision was saved is unknown."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            if started:
                raise
            request = Request(scope, receive)
            stopping = DatabaseDown(
                "the server stopped before the database answered",
                hint="if this was a decision, open the item again to see whether it was saved",
                fields={"saved": None} if request.method == "POST" else {},
            )
            await error(request, stopping)(scope, receive, send)


def webhook_sender(desk: ReviewDesk, rounds: int = 100) -> Callable[[], int]:
    """A function that sends up to `rounds` due deliveries, each signed with its own workflow's
    secret, and returns how many it delivered. Deliveries of a workflow whose secret is not set
    are left alone (unclaimed, so they hold up nothing), with one warning per workflow."""
    warned: set[str] = set()

    def send() -> int:
        secrets, problems = webhooks.signing_secrets(desk.workflows.values())
        for name, problem in problems.items():
            if name not in warned:
                warned.add(name)
                log.warning("smallops: not sending the webhooks of %s: %s", name, problem)
        return webhooks.deliver_due(desk.engine, secrets, limit=rounds)[0]

    return send
