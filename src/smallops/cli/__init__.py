"""The `smallops` command: a thin skin over the library, one module per noun.

Every error a user can cause is one line on stderr with a hint, and an exit code CI can use:
2 for usage and configuration errors, 1 for runtime failures.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer

from smallops import __version__
from smallops.cli import (
    alerts,
    check,
    db,
    doctor,
    drift,
    export,
    gateway,
    init,
    logs,
    prune,
    report,
    review,
    run,
    secrets,
    serve,
    status,
)
from smallops.cli import eval as eval_cli
from smallops.cli._common import HELP_WIDTH, Hangup, err
from smallops.errors import SmallopsError
from smallops.redact import Redactor

app = typer.Typer(
    name="smallops",
    help="AI operations for small teams: pinned, logged, reviewed LLM workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=HELP_WIDTH,
)


def _version(value: bool) -> None:
    if value:
        print(f"smallops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    project: Path | None = typer.Option(
        None,
        "--project",
        "-p",
        help="Project folder (default: found from here upward).",
        envvar="SMALLOPS_PROJECT",
        file_okay=False,
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    ctx.obj = {"project": project}


init.register(app)
run.register(app)
logs.register(app)
report.register(app)
eval_cli.register(app)
check.register(app)
doctor.register(app)
drift.register(app)
status.register(app)
prune.register(app)
app.add_typer(review.app, name="review")
app.add_typer(export.app, name="export")
serve.register(app)
app.add_typer(db.app, name="db")
app.add_typer(alerts.app, name="alerts")
app.add_typer(secrets.app, name="secrets")
app.add_typer(gateway.app, name="gateway")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, turning smallops errors into one line and an exit code.

    Usage errors (exit 2) are reported by Typer itself. Before exiting, the log is drained: a
    command whose run records could not all be kept (in the database or the spool) says so and
    exits non-zero, whatever the command was.
    """
    args = run.normalise_argv(list(sys.argv[1:] if argv is None else argv))
    code: int | str | None = 0
    try:
        app(args=args, prog_name="smallops")
    except SystemExit as exc:
        code = exc.code
    except SmallopsError as exc:
        err.print(f"error: {exc}", markup=False)
        code = exc.exit_code
    except Exception as exc:
        if not _is_database_error(exc):
            _report_lost()
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err.print(f"error: database: {Redactor.from_environment()(first)}", markup=False)
        code = 1
    except KeyboardInterrupt:
        err.print("interrupted; completed calls are recorded", markup=False)
        code = 130
    except Hangup as exc:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            err.print(f"stopped by {exc}; completed work is recorded", markup=False)
        code = 128 + exc.signum
    except BaseException:  # a bug: still say what became of the log before the traceback
        _report_lost()
        raise
    if _report_lost():
        code = code or 1
    sys.exit(code)


def _is_database_error(exc: BaseException) -> bool:
    """An SQLAlchemy error: SQLAlchemy is loaded only by the commands that use the database,
    so an error can only be one of its own once it is."""
    loaded = sys.modules.get("sqlalchemy.exc")
    return loaded is not None and isinstance(exc, loaded.SQLAlchemyError)


def _report_lost() -> int:
    """Drain the log; one line if any run record could not be kept. Returns how many."""
    if "smallops.storage.writer" not in sys.modules:
        return 0  # no command of this process wrote to the log
    from smallops.storage.writer import settle_log

    lost = settle_log()
    if lost:
        err.print(
            f"error: {lost} run records could not be kept, neither in the log database nor in "
            "its spool (see the messages above)",
            markup=False,
        )
    return lost
