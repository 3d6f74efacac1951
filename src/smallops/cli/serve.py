"""`smallops serve`: the review queue in a browser."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command() -> None:
    """Serve the review queue in a browser."""
    raise typer.Exit(1)
