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
