"""`smallops gateway`: the OpenAI-compatible endpoint, and its keys."""

from __future__ import annotations

from typing import Any

import typer

from smallops.cli import _common

app = typer.Typer(
    context_settings=_common.HELP_WIDTH,
    invoke_without_command=True,
)
keys = typer.Typer(
    help="The gateway's virtual keys: create, list, revoke.",
    no_args_is_help=True,
    context_settings=_common.HELP_WIDTH,
)
app.add_typer(keys, name="keys")


@app.callback()
def gateway_command(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8790, "--port", min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        max=64,
        help="Worker processes. Rate limits and breakers are per process unless "
        "SMALLOPS_REDIS_URL is set; budgets are always shared through the database.",
    ),
) -> None:
    """The OpenAI-compatible gateway for the routes in smallops.toml; `keys` manages its keys.

    Serves POST /v1/chat/completions (streamed or not) and GET /v1/models. Clients use any
    OpenAI SDK with base_url http://HOST:PORT/v1 and a key from `smallops gateway keys
    create`; the providers' own keys never leave the gateway.
    """
    if ctx.invoked_subcommand is not None:
        return
    from smallops.gateway.server import serve

    project = _common.project(ctx)
    serve(project.settings, host=host, port=port, workers=workers, say=_say)


def _say(line: str) -> None:
    _common.out.print(line, markup=False)


@keys.command("create")
def create_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The key's name: the team or service that uses it."),
    routes: str | None = typer.Option(
        None, "--routes", help="Comma-separated routes it may use (default: every route)."
    ),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute for this key."),
    daily_usd: float | None = typer.Option(None, "--daily-usd", help="Its daily budget in USD."),
    as_json: bool = typer.Option(False, "--json", help="The key and its settings as JSON."),
) -> None:
    """Create a key and print it, once: only its SHA-256 is kept."""
    from smallops.gateway.keys import create_key

    project = _common.project(ctx)
    settings = project.settings
    wanted = [r.strip() for r in routes.split(",") if r.strip()] if routes is not None else None
    key, row = create_key(
        project.engine(),
        name,
        routes=wanted,
        rpm=rpm,
        daily_usd=daily_usd,
        known_routes=lambda: list(settings.gateway.routes),
    )
    if as_json:
        _common.print_json({"key": key, **_shown(row)})
        return
    _common.out.print(key, markup=False)
    _common.err.print(
        f"key {row['name']!r} created ({_scope(row)}); it is shown only this once", markup=False
    )


@keys.command("list")
def list_command(
    ctx: typer.Context,
    revoked: bool = typer.Option(False, "--revoked", help="Include revoked keys."),
    as_json: bool = typer.Option(False, "--json", help="The keys as a JSON list."),
) -> None:
    """List the keys (their start only, never the whole key), oldest first."""
    from smallops.storage.gateway_keys import list_keys

    rows = list_keys(_common.project(ctx).engine(), revoked=revoked)
    if as_json:
        _common.print_json([_shown(row) for row in rows])
        return
    if not rows:
        _common.out.print("no keys: smallops gateway keys create NAME", markup=False)
        return
    for row in rows:
        state = f"revoked {_common.when(row['revoked_at'])}" if row["revoked_at"] else "active"
        _common.out.print(
            f"{row['name']}  {row['prefix']}...  {_scope(row)}  "
            f"created {_common.when(row['created_at'])}  {state}  id {row['id']}",
            markup=False,
        )


@keys.command("revoke")
def revoke_command(
    ctx: typer.Context,
    name_or_id: str = typer.Argument(..., help="The key's name or id."),
    as_json: bool = typer.Option(False, "--json", help="The revoked keys as JSON."),
) -> None:
    """Revoke a key: the gateway refuses it within seconds (its lookups are cached 5 s)."""
    from smallops.gateway.keys import revoke

    revoked = revoke(_common.project(ctx).engine(), name_or_id)
    if as_json:
        _common.print_json(revoked)
        return
    for row in revoked:
        _common.out.print(f"revoked {row['name']} (id {row['id']})", markup=False)


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "key_hash"}


def _scope(row: dict[str, Any]) -> str:
    routes = ", ".join(row["routes"]) if row.get("routes") is not None else "every route"
    limits = []
    if row.get("rpm") is not None:
        limits.append(f"{row['rpm']}/minute")
    if row.get("daily_usd") is not None:
        limits.append(f"${row['daily_usd']:g}/day")
    return routes + (f"; {', '.join(limits)}" if limits else "")
