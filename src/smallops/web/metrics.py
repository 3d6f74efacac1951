"""`GET /metrics` for Prometheus: on the review server behind its access rules (a reviewer's
session, or the review token as `Authorization: Bearer`), or on a port of its own bound to
127.0.0.1 without login (`smallops serve --metrics-port`), for a Prometheus on the same host.

Each scrape reads the log database (smallops.dashboards.metrics) in a worker thread, bounded as
every page's database work is: an outage is a 503, which Prometheus records as a failed scrape.
prometheus_client is loaded at the first scrape, so a server nobody scrapes never loads it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from smallops.errors import ConfigError
from smallops.web._http import _local_host, error, guarded, web
from smallops.web.auth import TOKEN_ENV
from smallops.web.outage import Database, DatabaseDown

if TYPE_CHECKING:
    from smallops.review.desk import ReviewDesk

MISSING_HINT = "pip install prometheus_client (smallops depends on it; the install is incomplete)"


class Metrics:
    """One app's metrics: a registry of its own, made at the first scrape."""

    def __init__(self, desk: ReviewDesk) -> None:
        self.desk = desk
        self._registry: Any = None
        self._lock = threading.Lock()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition the scraper asked for, and its content type (reads the database)."""
        try:
            from smallops.web import prometheus
        except ImportError:
            raise ConfigError("/metrics needs prometheus_client", hint=MISSING_HINT) from None
        with self._lock:
            if self._registry is None:
                self._registry = prometheus.new_registry(self.desk.engine, self.desk.workflows)
        return prometheus.exposition(self._registry, accept)


async def _metrics(request: Request) -> Response:
    state = web(request)
    metrics: Metrics = request.app.state.metrics
    try:
        body, content_type = await state.db.call(metrics.render, request.headers.get("accept"))
    except ConfigError as exc:
        return error(request, exc, 501)
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


_guarded_metrics = guarded(_metrics)


async def metrics_page(request: Request) -> Response:
    """The metrics for a logged-in reviewer or the review token. A scraper without either gets
    a 401 saying what to send, where a browser is sent to the login page."""
    response = await _guarded_metrics(request)
    location = response.headers.get("location", "")
    if response.status_code == 303 and location.startswith("/login") and not _browser(request):
        return PlainTextResponse(
            f"login required: send Authorization: Bearer with {TOKEN_ENV}'s value\n",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"},
        )
    return response


def _browser(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def loopback_app(desk: ReviewDesk, db_timeout: float | None) -> Starlette:
    """/metrics alone, without login, for a server bound to 127.0.0.1: it answers only to a
    Host header naming this machine, so a web page rebound by DNS cannot read it."""
    metrics = Metrics(desk)
    db = Database(desk.engine, db_timeout)

    async def page(request: Request) -> Response:
        if not _local_host(request):
            return PlainTextResponse("this port answers only to localhost\n", status_code=400)
        try:
            body, content_type = await db.call(metrics.render, request.headers.get("accept"))
        except DatabaseDown as exc:
            return PlainTextResponse(f"{exc.message}\n", status_code=503, headers=exc.headers)
        except ConfigError as exc:
            return PlainTextResponse(f"{exc.message}: {exc.hint}\n", status_code=501)
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    return Starlette(routes=[Route("/metrics", page)])
