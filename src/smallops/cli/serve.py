"""`smallops serve`: the review queue in a browser."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from smallops.cli import _common

if TYPE_CHECKING:
    import uvicorn

    from smallops.review.desk import ReviewDesk
    from smallops.web.auth import LoginThrottle

WEBHOOK_INTERVAL = 5.0  # seconds between rounds of due webhook deliveries
GRACE = 3  # seconds a stopping server waits for requests in flight before cancelling them
FORWARDED_ENV = "SMALLOPS_FORWARDED_ALLOW_IPS"


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8787, "--port", min=1, max=65535, help="Port to listen on."),
    login: bool = typer.Option(
        False,
        "--login",
        help="Require login even on 127.0.0.1 (always required on any other address).",
    ),
    forwarded_allow_ips: str | None = typer.Option(
        None,
        "--forwarded-allow-ips",
        envvar=FORWARDED_ENV,
        help="Comma-separated addresses of the reverse proxies to trust: their X-Forwarded-For "
        "header names the client. Without it the header is ignored, and a client is the address "
        "it connects from: behind a proxy, every client is the proxy, so 20 wrong logins from "
        "any one of them lock out every reviewer and script for 15 minutes.",
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        min=1,
        max=65535,
        help="Also serve /metrics for Prometheus on this port, bound to 127.0.0.1 and without "
        "login (the review server's /metrics needs a login or the review token).",
    ),
) -> None:
    """Serve the review queue in a browser.

    Reviewers log in with a [reviewers] password from smallops.toml (`smallops review
    hash-password`); scripts use the SMALLOPS_REVIEW_TOKEN, which acts as `token` (or
    `token:NAME` with SMALLOPS_REVIEW_TOKEN_NAME), never as a reviewer. On 127.0.0.1 without
    --login the reviewer is the OS user (or SMALLOPS_REVIEWER). Due decision webhooks are sent
    while it runs. On SIGTERM or Ctrl-C it stops within seconds, even with the database
    stalled, and gives back the items its reviewers claimed and did not decide. Prometheus
    scrapes /metrics with the review token, or --metrics-port's loopback port without it.
    """
    import uvicorn

    from smallops.errors import InputError
    from smallops.review.desk import ReviewDesk
    from smallops.web.app import create_app
    from smallops.web.auth import is_loopback

    if metrics_port is not None and metrics_port == port:
        raise InputError(
            f"--metrics-port {metrics_port} is the review server's own port",
            hint="give the metrics another port (or scrape /metrics on this one with the token)",
        )
    project = _common.project(ctx)
    require_login = login or not is_loopback(host)
    desk = ReviewDesk(project.engine(), project.workflows)
    app = create_app(
        desk,
        project.settings,
        require_login=require_login,
        webhook_interval=WEBHOOK_INTERVAL,
        alert_interval=project.settings.alerts.interval,
    )
    # bound before anything is said: a taken port fails the command, not a server half started
    metrics_server = serve_metrics(desk, metrics_port) if metrics_port is not None else None
    who = (
        "login required"
        if require_login
        else f"no login, reviewing as {app.state.web.auth.reviewer}"
    )
    shown = f"[{host}]" if ":" in host else host
    _common.out.print(f"smallops review queue at http://{shown}:{port}/ ({who})", markup=False)
    if not is_loopback(host) and not forwarded_allow_ips:
        _common.out.print(shared_throttle_note(app.state.web.throttle), markup=False)
    if metrics_port is not None:
        _common.out.print(
            f"metrics at http://127.0.0.1:{metrics_port}/metrics (no login, this machine only)",
            markup=False,
        )
    # On SIGTERM or Ctrl-C: requests in flight get GRACE seconds, then the held items are given
    # back (app.GIVE_BACK_WITHIN at most); each database call is bounded, so a stalled database
    # cannot hold the exit up.
    # X-Forwarded-For is believed only from the proxies named: anyone else could send it to
    # pass for another address and slip past the per-address login limit.
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=GRACE,
            proxy_headers=bool(forwarded_allow_ips),
            forwarded_allow_ips=forwarded_allow_ips or None,
        )
    finally:
        if metrics_server is not None:
            metrics_server.should_exit = True


def serve_metrics(desk: ReviewDesk, port: int) -> uvicorn.Server:
    """/metrics without login on 127.0.0.1:`port`, served from a daemon thread (which installs no
    signal handlers: the review server's own handle SIGTERM and Ctrl-C). The socket is bound
    here, so a port already taken is a clear error before anything is served."""
    import socket
    import threading

    import uvicorn

    from smallops.errors import ConfigError
    from smallops.web.app import DB_TIMEOUT
    from smallops.web.metrics import loopback_app

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as exc:
        listener.close()
        raise ConfigError(
            f"cannot listen on 127.0.0.1:{port} for the metrics: {exc.strerror or exc}",
            hint="give --metrics-port a port that is free",
        ) from None
    config = uvicorn.Config(
        loopback_app(desk, DB_TIMEOUT), log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="smallops-metrics", daemon=True
    )
    thread.start()
    return server


def shared_throttle_note(throttle: LoginThrottle) -> str:
    """Said at start when clients may come through a proxy that is not trusted to name them."""
    minutes = round(throttle.window / 60)
    return (
        "note: no --forwarded-allow-ips, so clients behind a reverse proxy share its address and "
        f"one login throttle: {throttle.per_address} wrong logins from any of them lock out every "
        f"reviewer and script for {minutes} minutes"
    )
