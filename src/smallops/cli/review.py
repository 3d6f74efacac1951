"""`smallops review`: the review queue in a terminal."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="The review queue: list, decide, measure, export.",
    no_args_is_help=True,
    context_settings={"max_content_width": 100, "terminal_width": 100},
)
