"""`smallops export otel`: send logged runs to an OpenTelemetry collector (a backfill)."""

from __future__ import annotations

import typer

from smallops.cli import _common
from smallops.errors import ConfigError

app = typer.Typer(
    help="Send the log to other tools.", no_args_is_help=True, context_settings=_common.HELP_WIDTH
)


@app.command("otel")
def otel_command(
    ctx: typer.Context,
    since: str = typer.Option("7d", "--since", help="e.g. 24h, 7d, 4w, or a date."),
) -> None:
    """Send the runs logged since then as OpenTelemetry spans to OTEL_EXPORTER_OTLP_ENDPOINT
    (else the otlp_endpoint of [telemetry] in smallops.toml).

    The spans are those the live export sends (ids derived from the run ids), so sending the
    same runs twice sends the same trace and span ids. Content follows
    OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT and each workflow's content mode.
    """
    from smallops.storage.otel_backfill import backfill
    from smallops.storage.otel_export import SpanExport, export_environment

    project = _common.project(ctx)
    environ = export_environment(project.settings.telemetry)
    if environ is None:
        raise ConfigError(
            "no OpenTelemetry endpoint to send to",
            hint="set OTEL_EXPORTER_OTLP_ENDPOINT (and OTEL_EXPORTER_OTLP_HEADERS for a key), "
            "or otlp_endpoint in [telemetry] of smallops.toml",
        )
    moment = _common.since(since)
    assert moment is not None
    export = SpanExport(environ=environ)
    try:
        read, accepted = backfill(project.engine(), moment, export)
    finally:
        export.close()
    say = _common.out.print
    say(f"{read} runs since {since}: {accepted} spans sent", markup=False)
    if export.dropped:
        _common.err.print(
            f"{export.dropped} spans were not accepted by the collector", markup=False
        )
        raise typer.Exit(1)
