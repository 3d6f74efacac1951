"""Running the gateway: uvicorn with uvloop and httptools (when installed), one app per worker."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from smallops.config import Settings
from smallops.errors import ConfigError
from smallops.gateway.app import Gateway

GRACE = 5  # seconds requests in flight get when the gateway is stopped
PROJECT_ENV = "SMALLOPS_PROJECT"


def serve(
    settings: Settings, *, host: str, port: int, workers: int, say: Callable[[str], None]
) -> None:
    """Serve until stopped; each worker process builds its own Gateway from the project."""
    import uvicorn

    if not settings.gateway.routes:
        raise ConfigError(
            "smallops.toml has no [gateway.routes]: the gateway would serve nothing",
            hint='add [gateway.routes."gpt-fast"] with model = "openai:gpt-4o-mini-2024-07-18"',
        )
    app = Gateway(settings)  # checks the routes and the database before anything is served
    shown = f"[{host}]" if ":" in host else host
    routes = ", ".join(settings.gateway.routes)
    say(f"smallops gateway at http://{shown}:{port}/v1 ({workers} worker(s)); routes: {routes}")
    if workers > 1 and not settings.redis_url:
        say(
            "note: without SMALLOPS_REDIS_URL each worker keeps its own rate limits and "
            "breakers (budgets are shared through the database)"
        )
    options = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": GRACE,
        "lifespan": "on",
    }
    if workers == 1:
        uvicorn.run(app, **options)  # type: ignore[arg-type]
        return
    os.environ[PROJECT_ENV] = str(settings.root)
    uvicorn.run("smallops.gateway.server:worker_app", factory=True, workers=workers, **options)  # type: ignore[arg-type]


def worker_app() -> Gateway:
    """The app of one worker process, from the project named in SMALLOPS_PROJECT."""
    return Gateway(Settings.load(Path(os.environ[PROJECT_ENV])))
