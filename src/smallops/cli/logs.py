"""`smallops logs` and `smallops show`: the log of calls, and one call's audit trail."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from smallops.cli import _common
from smallops.cli._table import Column, print_fitted
from smallops.error_types import REFUSALS
from smallops.errors import NotFoundError
from smallops.ids import short_id
from smallops.kinds import STATUSES
from smallops.kinds import OriginFilter as Origin

if TYPE_CHECKING:
    from smallops.project import Project
    from smallops.storage.quarantine import Entry


def register(app: typer.Typer) -> None:
    app.command("logs")(logs_command)
    app.command("show")(show_command)


def logs_command(
    ctx: typer.Context,
    workflow: str | None = typer.Argument(None, help="Only this workflow."),
    since: str | None = typer.Option(None, "--since", help="e.g. 30m, 24h, 7d, or a date."),
    status: str | None = typer.Option(
        None,
        "--status",
        help=f"A status ({', '.join(STATUSES)}) or an error type "
        "(refused, truncated, invalid_json, schema_mismatch, rate_limited, timeout, ...; "
        f"a guard's: {', '.join(REFUSALS)}; no key: secret_unavailable).",
    ),
    origin: Origin = typer.Option(
        "production",
        "--origin",
        help="The application's calls (production), the eval runner's (eval), or all.",
    ),
    limit: int = typer.Option(
        50, "--limit", "-n", min=1, max=_common.MAX_LIMIT, help="At most this many runs."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per run."),
) -> None:
    """List recorded calls, newest first."""
    from smallops.storage.queries import list_runs, origin_of

    project = _common.project(ctx)
    rows = list_runs(
        project.engine(),
        workflow=workflow,
        since=_common.since(since),
        status=status,
        origin=origin,
        limit=limit,
    )
    if as_json:
        for row in rows:
            _common.print_json(row)
        return
    if not rows:
        filtered = workflow or since or status or origin != "production"
        _common.out.print(
            "no runs recorded yet" + (" for these filters" if filtered else ""), markup=False
        )
        return
    columns = [
        Column("started", hide=2),
        Column("workflow", cut_to=12, hide=1),
        Column("status"),
        Column("origin", hide=3),
        Column("error", cut_to=9),
        Column("ms", hide=4, right=True),
        Column("run id"),
    ]
    title = None
    if len({row["workflow"] for row in rows}) == 1:
        title = rows[0]["workflow"]
        columns.pop(1)
    cells = [
        {
            "started": row["started_at"].astimezone().strftime("%m-%d %H:%M:%S"),
            "workflow": row["workflow"],
            "status": row["status"],
            "origin": origin_of(row),
            "error": row["error_type"] or "",
            "ms": f"{row['latency_ms']:.0f}",
            "run id": short_id(row["id"]),
        }
        for row in rows
    ]
    print_fitted(columns, [[c[column.name] for column in columns] for c in cells], title)
    _common.out.print("`smallops show RUN_ID`: one call's audit trail", style="dim", markup=False)


def show_command(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help=_common.RUN_ID_HELP),
    prompt: bool = typer.Option(
        False, "--prompt", help="Also print the prompt template and the rendered messages."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="The whole record as JSON: raw requests and responses included."
    ),
) -> None:
    """Show one call: what it was asked, what it answered, its attempts and its review."""
    from smallops.dashboards.runs import run_record
    from smallops.storage.writer import quarantine_for

    project = _common.project(ctx)
    try:
        record = run_record(project.engine(), run_id, lambda name: _output_model(project, name))
    except NotFoundError:
        entry = quarantine_for(project.settings.log).find(run_id)
        if entry is None:
            raise
        _print_set_aside(entry, as_json)
        return
    if as_json:
        _common.print_json(record)
        return
    _print_run(record, record["review"], prompt)


def _print_set_aside(entry: Entry, as_json: bool) -> None:
    """A run the database refused: why, where its record is kept, and what it says."""
    at = datetime.fromtimestamp(entry.at, timezone.utc)
    run = {k: v for k, v in (entry.run() or {}).items() if k in _SET_ASIDE_FIELDS}
    if as_json:
        _common.print_json(
            {
                "set_aside": True,
                "reason": entry.reason,
                "at": at,
                "file": str(entry.path),
                "run": run,
                "record": entry.data,
            }
        )
        return
    say = _common.out.print
    say(f"[bold]run {entry.run_id}[/bold]  {escape(entry.workflow or '')}  [red]set aside[/red]")
    say(
        f"the log database refused this record ({escape(entry.reason)}) on "
        f"{_common.when(at)}; it is kept whole in {escape(str(entry.path))}"
    )
    for key, value in run.items():
        say(f"  {key:<18} {escape(str(value))}")


_SET_ASIDE_FIELDS = ("status", "error_type", "model_requested", "model_served", "latency_ms")


def _output_model(project: Project, workflow: str) -> Any:
    """The workflow's output model, if it loads (the record then reads in its field order)."""
    workflows, _ = project.load_workflows()
    known = workflows.get(workflow)
    return known.output if known else None


def _print_run(run: dict[str, Any], review: dict[str, Any] | None, prompt: bool) -> None:
    """The record as `run_record` gives it: inputs and output already in reading order."""
    from smallops.dashboards.runs import CONTENT_LABELS, attempt_line
    from smallops.storage.queries import origin_of

    say = _common.out.print
    say(f"[bold]run {run['id']}[/bold]  {escape(run['workflow'])}  [bold]{run['status']}[/bold]")
    if run["error_type"]:
        say(f"error: {escape(run['error_type'])}: {escape(run['error_message'] or '')}")
    flag = (
        "  [red](served model differs from the pinned one)[/red]" if run["model_mismatch"] else ""
    )
    facts = [
        ("started", _common.when(run["started_at"])),
        ("latency", f"{run['latency_ms']:.1f} ms over {run['attempt_count']} attempt(s)"),
        ("provider", run["provider"] + (f" at {run['endpoint']}" if run["endpoint"] else "")),
        ("model asked", run["model_requested"] + (" (unpinned)" if run["allow_unpinned"] else "")),
        ("model served", run["model_served"] or "-"),
        ("fingerprint", run["system_fingerprint"] or "-"),
        (
            "tokens",
            f"{run['input_tokens']} in ({run['cached_tokens']} cached), "
            f"{run['output_tokens']} out ({run['reasoning_tokens']} reasoning)",
        ),
        ("cost", f"{_common.money(run['cost_usd'])} ({run['cost_source']})"),
        ("prompt version", run["prompt_version"]),
        ("git commit", run["git_commit"] or "-"),
        ("review / fallback", f"{run['review_policy']} / {run['fallback']}"),
        ("origin", origin_of(run)),
        ("content", CONTENT_LABELS.get(run["content"] or "full", run["content"])),
    ]
    if run.get("caller"):
        facts.insert(1, ("caller", f"gateway key {run['caller']}"))
    for label, value in facts:
        say(f"  {label:<18} {escape(str(value))}" + (flag if label == "model served" else ""))
    kept = (run["content"] or "full") in ("full", "redacted")
    template = (run["prompt"] or {}).get("template")
    _common.section("inputs")
    _common.print_fields(run["inputs"], kept)
    _common.section("output")
    _common.print_fields(run["output"], kept)
    _common.section("attempts")
    for attempt in run["attempts"]:
        _common.out.print(f"  {attempt_line(attempt)}", markup=False)
    _print_review(review)
    if prompt:
        _common.section(f"prompt template ({run['prompt_version']})")
        _common.out.print(template or "(not recorded)", markup=False)
        for message in run["messages"] or []:
            _common.section(f"message: {message['role']}")
            _common.out.print(message["content"], markup=False)
    else:
        say(
            "\nthe prompt and rendered messages: --prompt; raw requests and responses: --json",
            style="dim",
            markup=False,
        )


def _print_review(review: dict[str, Any] | None) -> None:
    """Who did what to the run's review item, and how it stands."""
    _common.section("review")
    say = _common.out.print
    if review is None:
        say("  not queued for review", markup=False)
        return
    say(
        f"  queued {_common.when(review['created_at'])} ({review['reason']}, route "
        f"{review['route']}); {review['state']}",
        markup=False,
    )
    for entry in review["history"]:
        reason = f": {entry['reason']}" if entry.get("reason") else ""
        say(
            f"  {_common.when(entry['decided_at'])}  {entry['action']} by {entry['reviewer']}"
            + reason,
            markup=False,
        )
    if review["state"] == "corrected":
        say("  corrected output:", markup=False)
        _common.print_fields(review["final_output"], True, indent=4)
