"""`smallops run`: call a workflow on inputs from a JSONL file or the command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from smallops.cli import _common
from smallops.cli.logs import short_id
from smallops.errors import InputError, WorkflowFailed
from smallops.jsonl import objects, parse_object
from smallops.result import Result
from smallops.storage.writer import writer_for
from smallops.workflow import Workflow

HELP = """Call WORKFLOW on inputs and record every call.

Inputs come from --input FILE.jsonl (one JSON object of template inputs per line; - for stdin;
eval-set lines work too, their "input" is used) or --json '{"subject": "..."}'.
Results print as a table, or as JSON lines with a bare --json.
The whole input is checked before the first call: a bad line stops the run with its line number.
Exit codes: 0 every call ended (answered or handed to its fallback), 1 some call failed, 2 usage.
"""

_OUTPUT_FLAG = "--json-output"


def normalise_argv(args: list[str]) -> list[str]:
    """`run ... --json` with no value asks for JSON output; with a value it gives the inputs."""
    if "run" not in args:
        return args
    out = []
    for i, arg in enumerate(args):
        following = args[i + 1] if i + 1 < len(args) else None
        bare = following is None or (following.startswith("-") and following != "-")
        out.append(_OUTPUT_FLAG if arg == "--json" and bare else arg)
    return out


def register(app: typer.Typer) -> None:
    app.command("run", help=HELP)(run_command)


def run_command(
    ctx: typer.Context,
    workflow: str = typer.Argument(..., help="Workflow name, e.g. email-triage."),
    input_file: Path | None = typer.Option(
        None, "--input", "-i", help="JSONL file of inputs, one object per line (- for stdin)."
    ),
    inline: str | None = typer.Option(
        None, "--json", help="Inputs as one JSON object; a bare --json prints JSON lines instead."
    ),
    json_output: bool = typer.Option(False, _OUTPUT_FLAG, hidden=True),
    concurrency: int = typer.Option(
        4, "--concurrency", "-c", min=1, max=256, help="Calls in flight at once."
    ),
) -> None:
    wf = _common.project(ctx).workflow(workflow)
    inputs = _read_inputs(input_file, inline)
    _check_inputs(wf, inputs)
    wf.plan()
    wf.provider.check()
    results = _run_all(wf, inputs, concurrency, show_progress=len(inputs) > 1 and not json_output)
    writer = writer_for(wf.settings)
    writer.flush()
    if json_output:
        for line, result in enumerate(results, 1):
            _common.print_json({"line": line, **_as_dict(result)})
    else:
        _print_table(wf, results)
    if not writer.healthy:
        _common.err.print(
            f"warning: the database is unreachable; {writer.spooled} runs are kept in "
            f"{writer.spool.folder} and will be written when it returns",
            markup=False,
        )
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def _read_inputs(path: Path | None, inline: str | None) -> list[dict[str, Any]]:
    if (path is None) == (inline is None):
        raise InputError(
            "give the inputs with either --input FILE.jsonl or --json '{...}'",
            hint='e.g. smallops run email-triage --json \'{"subject": "Hi", "body": "..."}\'',
        )
    if inline is not None:
        return [parse_object(inline, "--json", "a JSON object of inputs")]
    assert path is not None
    if str(path) == "-":
        text = typer.get_text_stream("stdin").read()
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
    rows = [_inputs_of(row) for _, row in objects(text, str(path), "a JSON object of inputs")]
    if not rows:
        raise InputError(f"{path} holds no inputs", hint="one JSON object per line")
    return rows


def _inputs_of(row: dict[str, Any]) -> dict[str, Any]:
    """An eval case (`{"id", "input": {...}, "expected"}`) runs on its input."""
    if isinstance(row.get("input"), dict) and "id" in row:
        return dict(row["input"])
    return row


def _check_inputs(wf: Workflow[Any], inputs: list[dict[str, Any]]) -> None:
    needed = wf.prompt.variables
    for number, row in enumerate(inputs, 1):
        missing = sorted(needed - row.keys())
        if missing:
            where = f"input {number}" if len(inputs) > 1 else "the input"
            raise InputError(
                f"{where} lacks {', '.join(repr(m) for m in missing)}",
                hint=f"workflow {wf.name} needs: {', '.join(sorted(needed))}",
            )


def _run_all(
    wf: Workflow[Any], inputs: list[dict[str, Any]], concurrency: int, show_progress: bool
) -> list[Result[Any]]:
    async def one(row: dict[str, Any]) -> Result[Any]:
        async with limit:
            try:
                return await wf.arun(**row)
            except WorkflowFailed as exc:
                return _failed(wf, exc)
            finally:
                progress.advance(task)

    async def every() -> list[Result[Any]]:
        return list(await asyncio.gather(*(one(row) for row in inputs)))

    progress = Progress(
        TextColumn(f"{wf.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_common.err,
        transient=True,
        disable=not show_progress,
    )
    with progress:
        task = progress.add_task("run", total=len(inputs))
        limit = asyncio.Semaphore(concurrency)
        return asyncio.run(every())


def _failed(wf: Workflow[Any], exc: WorkflowFailed) -> Result[Any]:
    from smallops.providers.base import Usage

    return Result(
        run_id=exc.run_id,
        workflow=wf.name,
        status="failed",
        output=None,
        error=exc.error_type,
        error_message=exc.message,
        prompt_version=wf.version.id,
        model=None,
        usage=Usage(),
        latency_ms=0.0,
        attempts=0,
    )


def _as_dict(result: Result[Any]) -> dict[str, Any]:
    output = result.output
    if isinstance(output, BaseModel):
        output = output.model_dump(mode="json")
    return {
        "run_id": result.run_id,
        "status": result.status,
        "output": output,
        "error": result.error,
        "error_message": result.error_message,
        "model": result.model,
        "latency_ms": result.latency_ms,
    }


def _print_table(wf: Workflow[Any], results: list[Result[Any]]) -> None:
    table = Table(title=f"{wf.name} · prompt {wf.version.id} · {wf.model}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("status", no_wrap=True)
    table.add_column("output / error", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("run id", no_wrap=True)
    for line, result in enumerate(results, 1):
        if result.ok or result.status == "fallback_default":
            shown = _summary(result.output)
        else:
            shown = f"{result.error}: {result.error_message}"
        table.add_row(str(line), result.status, _common.short(shown, 70), short_id(result.run_id))
    _common.out.print(table)
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    _common.out.print(", ".join(f"{n} {status}" for status, n in counts.items()), markup=False)


def _summary(output: Any) -> str:
    if isinstance(output, BaseModel):
        return " ".join(f"{k}={v}" for k, v in output.model_dump(mode="json").items())
    return str(output)
