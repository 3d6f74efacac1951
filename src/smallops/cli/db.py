"""`smallops db`: the log database's schema."""

from __future__ import annotations

import typer

from smallops.cli import _common
from smallops.errors import StorageError

app = typer.Typer(
    help="The log database: create or migrate its tables.",
    no_args_is_help=True,
    context_settings=_common.HELP_WIDTH,
)


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Create or migrate the log database's tables to the latest version."""
    from smallops.storage.db import current_revision, head_revision, log_database, safe_url
    from smallops.storage.db import upgrade as run_upgrade

    project = _common.project(ctx)
    url, engine = log_database(project.settings.log)
    try:
        before = current_revision(engine)
        run_upgrade(engine)
    except Exception as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(
            f"cannot migrate {safe_url(url)}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            hint=f"check that the database is running and that "
            f"{project.settings.source('database_url')} is right",
        ) from None
    head = head_revision()
    change = "already at" if before == head else f"upgraded {before or 'empty'} →"
    _common.out.print(f"{safe_url(url)}: {change} {head}", markup=False)


@app.command("current")
def current(ctx: typer.Context) -> None:
    """Print the schema version of the log database, and the latest one."""
    from smallops.storage.db import current_revision, head_revision, log_database, safe_url

    project = _common.project(ctx)
    url, engine = log_database(project.settings.log)
    revision = current_revision(engine)
    _common.out.print(
        f"{safe_url(url)}: at {revision or 'empty'}, latest {head_revision()}", markup=False
    )


@app.command("rebuild-rollups")
def rebuild_rollups(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="The result as one JSON object."),
) -> None:
    """Recompute the rollups `report` reads from the runs: after importing runs or editing them.

    The log writer keeps the rollups up to date; a log upgraded from before they existed gets
    them computed by `db upgrade`. Runs in one transaction, so log writes wait until it is done
    (about 30 s per million runs on 2 cores).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from smallops.storage import rollups
    from smallops.storage.db import ensure_schema, log_database, safe_url

    project = _common.project(ctx)
    url, engine = log_database(project.settings.log)
    show = not as_json and _common.err.is_terminal
    try:
        ensure_schema(engine)
        total = rollups.count_runs(engine) if show else 0
        with Progress(
            TextColumn("rebuild-rollups"),
            BarColumn(),
            MofNCompleteColumn(),
            console=_common.err,
            transient=True,
            disable=not show or total == 0,
        ) as bar:
            task = bar.add_task("runs", total=total)
            done = rollups.rebuild(engine, lambda n: bar.advance(task, n))
    except Exception as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(
            f"cannot rebuild the rollups in {safe_url(url)}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
            hint=f"check that the database is running and that "
            f"{project.settings.source('database_url')} is right",
        ) from None
    if as_json:
        _common.print_json(
            {"runs": done.runs, "rollup_rows": done.rollup_rows, "seconds": round(done.seconds, 3)}
        )
        return
    _common.out.print(
        f"{safe_url(url)}: rollups rebuilt from {done.runs:,} runs "
        f"({done.rollup_rows:,} rows) in {done.seconds:.1f} s",
        markup=False,
    )
