"""`create_app`: the review UI as a Starlette app over a ReviewDesk.

It takes the desk and the settings rather than a project folder, so tests (and applications that
embed the review queue) build it from whatever engine and workflows they already have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from smallops.config import Settings
from smallops.errors import ConfigError
from smallops.review import webhooks
from smallops.review.desk import ReviewDesk
from smallops.web import item, login, queue
from smallops.web._http import Web, templates
from smallops.web.auth import Auth, Sessions, load_secret_key

HERE = Path(__file__).parent
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
) -> Starlette:
    """The review UI and its JSON API.

    `reviewer` names who decides when no login is required (default: SMALLOPS_REVIEWER or the
    OS user). `secret_key` signs sessions (default: SMALLOPS_SECRET_KEY, or a key kept in the
    project's .smallops folder). With `webhook_interval`, due decision webhooks are sent every
    that many seconds while the app runs. Raises ConfigError if login is required and no
    reviewer could log in.
    """
    auth = Auth.for_server(
        settings.reviewers, require_login=require_login, reviewer=reviewer, env=env
    )
    key = secret_key or load_secret_key(settings.state_dir, env)
    jinja = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined
    )
    routes = [
        Route("/", queue.queue_page),
        Route("/next", queue.next_item, methods=["POST"]),
        Route("/items/{run_id}", item.item_page),
        Route("/items/{run_id}/{action}", item.act, methods=["POST"]),
        Route("/login", login.login_page, methods=["GET", "POST"]),
        Route("/logout", login.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    lifespan = _webhook_lifespan(desk, webhook_interval) if webhook_interval else None
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.web = Web(desk, auth, Sessions(key), templates(jinja))
    return app


def _webhook_lifespan(desk: ReviewDesk, interval: float) -> Any:
    """Send due webhooks in the background for as long as the app serves."""
    send = webhook_sender(desk)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                try:
                    await asyncio.to_thread(send)
                except Exception as exc:  # the database or network hiccupped: next round
                    log.warning("smallops: webhook delivery failed: %s", exc)
                await asyncio.sleep(interval)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan


class _NoSecret(Exception):
    """A delivery whose signing secret is not set: left for later."""


def webhook_sender(desk: ReviewDesk, rounds: int = 100) -> Callable[[], int]:
    """A function that sends what is due, one delivery at a time, and returns how many it sent.

    One at a time so that a delivery without a secret (skipped, with one warning per variable)
    stays leased and out of the way instead of holding up the deliveries behind it.
    """
    warned: set[str] = set()

    def secret_for(url: str) -> str:
        names = [w.webhook_secret_env for w in desk.workflows.values() if w.webhook == url]
        name = names[0] if names else webhooks.DEFAULT_SECRET_ENV
        try:
            return webhooks.secret_from_env(name)
        except ConfigError as exc:
            if name not in warned:
                warned.add(name)
                log.warning("smallops: not sending webhooks to %s: %s", url, exc)
            raise _NoSecret(name) from None

    def send() -> int:
        sent = 0
        for _ in range(rounds):
            try:
                delivered, failed = webhooks.deliver_due(desk.engine, secret_for, limit=1)
            except _NoSecret:
                continue
            if delivered + failed == 0:
                break
            sent += delivered
        return sent

    return send
