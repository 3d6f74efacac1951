"""`smallops logs` and `smallops show`: the log of calls, and one call's whole audit trail."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from smallops.cli import _common
from smallops.errors import NotFoundError
from smallops.resilience.guards import REFUSALS
from smallops.result import STATUSES
from smallops.storage.quarantine import Entry
from smallops.storage.queries import get_run, list_runs
from smallops.storage.writer import quarantine_for


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
        f"a guard's: {', '.join(REFUSALS)}).",
    ),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most this many runs."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per run."),
) -> None:
    """List recorded calls, newest first."""
    project = _common.project(ctx)
    rows = list_runs(
        project.engine(), workflow=workflow, since=_common.since(since), status=status, limit=limit
    )
    if as_json:
        for row in rows:
            _common.print_json(row)
        return
    if not rows:
        _common.out.print(
            "no runs recorded yet"
            + (" for these filters" if (workflow or since or status) else ""),
            markup=False,
        )
        return
    workflows = {row["workflow"] for row in rows}
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ["started", "workflow", "status", "error", "ms", "run id"]
    if len(workflows) == 1:
        columns.remove("workflow")
        table.title, table.title_justify = rows[0]["workflow"], "left"
    for column in columns:
        table.add_column(column, no_wrap=True, justify="right" if column == "ms" else "left")
    for row in rows:
        values = {
            "started": row["started_at"].astimezone().strftime("%m-%d %H:%M:%S"),
            "workflow": row["workflow"],
            "status": row["status"],
            "error": row["error_type"] or "",
            "ms": f"{row['latency_ms']:.0f}",
            "run id": short_id(row["id"]),
        }
        table.add_row(*(values[column] for column in columns))
    _common.out.print(table)
    _common.out.print(
        "run ids are shortened: `smallops show ID` takes them as they are",
        style="dim",
        markup=False,
    )


CONTENT_LABELS = {
    "full": "full",
    "redacted": "redacted (personal data masked before it was written)",
    "metadata": "metadata only (inputs, messages and outputs were not kept)",
    "pruned": "pruned (content removed by `smallops prune`)",
}


def short_id(run_id: str) -> str:
    """The random tail of a run id: unique in practice, and what `show` accepts."""
    return run_id[-12:]


def show_command(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="A run id, or a unique start or end of one (8+ chars)."),
    as_json: bool = typer.Option(False, "--json", help="The whole record as JSON."),
) -> None:
    """Show one call's whole audit trail: prompt version, messages, raw responses, output."""
    project = _common.project(ctx)
    try:
        run = get_run(project.engine(), run_id)
    except NotFoundError:
        entry = quarantine_for(project.settings).find(run_id)
        if entry is None:
            raise
        _print_set_aside(entry, as_json)
        return
    if as_json:
        _common.print_json(run)
        return
    _print_run(run)


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


def _print_run(run: dict[str, Any]) -> None:
    say = _common.out.print
    say(f"[bold]run {run['id']}[/bold]  {escape(run['workflow'])}  [bold]{run['status']}[/bold]")
    if run["error_type"]:
        say(f"error: {escape(run['error_type'])}: {escape(run['error_message'] or '')}")
    served = run["model_served"] or "-"
    flag = (
        "  [red](served model differs from the pinned one)[/red]" if run["model_mismatch"] else ""
    )
    facts = [
        ("started", _common.when(run["started_at"])),
        ("latency", f"{run['latency_ms']:.1f} ms over {run['attempt_count']} attempt(s)"),
        ("provider", run["provider"] + (f" at {run['endpoint']}" if run["endpoint"] else "")),
        ("model asked", run["model_requested"] + (" (unpinned)" if run["allow_unpinned"] else "")),
        ("model served", served),
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
        ("content", CONTENT_LABELS.get(run["content"] or "full", run["content"])),
    ]
    for label, value in facts:
        say(f"  {label:<18} {escape(str(value))}" + (flag if label == "model served" else ""))
    _section("inputs", json.dumps(run["inputs"], indent=2, ensure_ascii=False))
    if run["prompt"]:
        _section(f"prompt template ({run['prompt_version']})", run["prompt"]["template"])
    for message in run["messages"] or []:
        _section(f"message: {message['role']}", message["content"])
    for attempt in run["attempts"]:
        head = (
            f"attempt {attempt['n']} ({attempt['purpose']}): "
            + (
                f"{attempt.get('error_type')}: {attempt.get('error_message')}"
                if attempt.get("error_type")
                else f"HTTP {attempt.get('status_code')}, finish={attempt.get('finish')}"
            )
            + f", {attempt.get('latency_ms', 0):.1f} ms"
        )
        kept = (run["content"] or "full") in ("full", "redacted")
        _section(head, attempt.get("response") or ("(no response body)" if kept else "(not kept)"))
    _section(
        "output",
        json.dumps(run["output"], indent=2, ensure_ascii=False)
        if run["output"] is not None
        else "(none)",
    )


def _section(title: str, body: str) -> None:
    _common.out.print(f"\n[bold]── {escape(title)}[/bold]")
    _common.out.print(body, markup=False)
