"""`smallops run`: call a workflow on inputs from a JSONL file or the command line."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from smallops import batches
from smallops.cli import _common
from smallops.cli._table import Column, print_fitted
from smallops.errors import InputError, WorkflowFailed
from smallops.ids import short_id
from smallops.jsonl import objects, parse_object
from smallops.records import Usage
from smallops.redact import Redactor
from smallops.result import Result

if TYPE_CHECKING:
    import asyncio

    from smallops.storage.writer import Account, Writer
    from smallops.workflow import Workflow

HELP = """Call WORKFLOW on inputs and record every call.

Inputs come from --input FILE.jsonl (one JSON object of template inputs per line; - for stdin;
eval-set lines work too, their "input" is used) or --json '{"subject": "..."}'.
Results print as a table, or as JSON lines with a bare --json.
The whole input is checked before the first call: a bad line stops the run with its line number.
Ctrl-C or SIGTERM stops starting calls, records the ones in flight as cancelled and prints what
finished; --resume then runs only the inputs of the file that have no recorded run yet.
Exit codes: 0 every call ended (answered or handed to its fallback) and is in the log; 1 some
call failed, or some records could not be kept; 2 usage; 3 the log database was unreachable
and the records wait in the spool; 130 / 143 interrupted.
"""

_OUTPUT_FLAG = "--json-output"
SPOOLED_EXIT = 3


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


@dataclass
class Batch:
    """The inputs of one invocation, with their line numbers and batch marks."""

    rows: list[dict[str, Any]]
    lines: list[int]
    batch_id: str | None = None
    marks: list[str] = field(default_factory=list)
    skipped: int = 0  # inputs a resumed batch had already recorded


@dataclass
class Outcome:
    """What happened to each input: a Result, interrupted mid-call, or never started."""

    results: list[Result[Any] | None]
    interrupted: set[int] = field(default_factory=set)
    signal: int | None = None

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results:
            if result is not None:
                counts[result.status] = counts.get(result.status, 0) + 1
        return counts

    @property
    def not_started(self) -> int:
        started = sum(1 for r in self.results if r is not None) + len(self.interrupted)
        return len(self.results) - started


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
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the last batch of this --input file: skip inputs it already recorded.",
    ),
) -> None:
    if resume and (input_file is None or str(input_file) == "-"):
        raise InputError("--resume needs --input FILE", hint="a file, not stdin or --json")
    from smallops.storage.writer import writer_for

    project = _common.project(ctx)
    wf = project.workflow(workflow)
    batch = _read_batch(wf, input_file, inline)
    _check_inputs(wf, batch.rows)
    if resume:
        _resume(project.engine(), wf, input_file, batch)
    wf.plan()
    wf.provider.check()
    writer = writer_for(wf.settings.log)
    before = writer.account()
    outcome = run_all(wf, batch, concurrency, show_progress=len(batch.rows) > 1 and not json_output)
    with _finishing():
        writer.close()
    account = writer.account().since(before)
    if json_output:
        for line, result in zip(batch.lines, outcome.results, strict=True):
            if result is not None:
                _common.print_json({"line": line, **_as_dict(result)}, writer.redact)
    elif outcome.signal is None:
        print_table(wf, outcome.results, batch.lines, writer.redact)
    _report(wf, input_file, batch, outcome, account, writer)
    writer.lost_reported = writer.lost
    if outcome.signal is not None:
        raise typer.Exit(128 + outcome.signal)
    if account.lost or any(r is not None and r.status == "failed" for r in outcome.results):
        raise typer.Exit(1)
    if account.spooled and not writer.healthy:
        raise typer.Exit(SPOOLED_EXIT)


def _read_batch(wf: Workflow[Any], path: Path | None, inline: str | None) -> Batch:
    if (path is None) == (inline is None):
        raise InputError(
            "give the inputs with either --input FILE.jsonl or --json '{...}'",
            hint='e.g. smallops run email-triage --json \'{"subject": "Hi", "body": "..."}\'',
        )
    if inline is not None:
        return Batch([parse_object(inline, "--json", "a JSON object of inputs")], [1])
    assert path is not None
    if str(path) == "-":
        text = typer.get_text_stream("stdin").read()
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
    found = [
        (line, _inputs_of(row)) for line, row in objects(text, str(path), "a JSON object of inputs")
    ]
    if not found:
        raise InputError(f"{path} holds no inputs", hint="one JSON object per line")
    batch = Batch([row for _, row in found], [line for line, _ in found])
    if str(path) != "-":
        batch.batch_id = batches.new_batch_id(wf.name, path)
        batch.marks = [batches.item(line, row) for line, row in found]
    return batch


def _resume(engine: Any, wf: Workflow[Any], path: Path | None, batch: Batch) -> None:
    """Carry on with the file's last batch: its id, and only the inputs it has not recorded."""
    from smallops.storage.queries import batch_items_done, latest_batch

    assert path is not None
    earlier = latest_batch(engine, batches.file_key(wf.name, path))
    if earlier is None:
        raise InputError(
            f"no earlier batch of {path} for {wf.name} to resume",
            hint="run it without --resume",
        )
    done = batch_items_done(engine, earlier)
    keep = [i for i, mark in enumerate(batch.marks) if mark not in done]
    batch.skipped = len(batch.rows) - len(keep)
    batch.rows = [batch.rows[i] for i in keep]
    batch.lines = [batch.lines[i] for i in keep]
    batch.marks = [batch.marks[i] for i in keep]
    batch.batch_id = earlier
    _common.err.print(
        f"resuming batch {earlier}: {batch.skipped} inputs already recorded, "
        f"{len(batch.rows)} to run",
        markup=False,
    )


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


def run_all(wf: Workflow[Any], batch: Batch, concurrency: int, show_progress: bool) -> Outcome:
    """Every input through the workflow, `concurrency` at a time. SIGINT and SIGTERM stop new
    calls and cancel those in flight (each is recorded as cancelled); what finished stands."""
    import asyncio

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    outcome = Outcome([None] * len(batch.rows))

    async def one(index: int, row: dict[str, Any]) -> None:
        async with limit:
            mark = batches.marked(batch.batch_id, batch.marks[index]) if batch.batch_id else None
            try:
                with mark or contextlib.nullcontext():
                    outcome.results[index] = await wf.arun(**row)
            except WorkflowFailed as exc:
                outcome.results[index] = _failed(wf, exc)
            except asyncio.CancelledError:
                outcome.interrupted.add(index)
                raise
            finally:
                progress.advance(task)

    async def every() -> None:
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(one(i, row)) for i, row in enumerate(batch.rows)]

        def stop(signum: int) -> None:
            if outcome.signal is None:
                outcome.signal = signum
                for pending in tasks:
                    pending.cancel()

        with _signals(loop, stop):
            await asyncio.gather(*tasks, return_exceptions=True)

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
        task = progress.add_task("run", total=len(batch.rows))
        limit = asyncio.Semaphore(concurrency)
        _common.run_async(every())
    return outcome


@contextlib.contextmanager
def _signals(loop: asyncio.AbstractEventLoop, stop: Any) -> Iterator[None]:
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop, signum)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def _finishing() -> Iterator[None]:
    """While the log is being drained, a signal does not cut it short (the drain is bounded)."""

    def note(_signum: int, _frame: Any) -> None:
        _common.err.print("finishing: writing the log of the calls made", markup=False)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):
            previous[signum] = signal.signal(signum, note)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _report(
    wf: Workflow[Any],
    path: Path | None,
    batch: Batch,
    outcome: Outcome,
    account: Account,
    writer: Writer,
) -> None:
    """The lines a person (or a log) needs after a batch: what was interrupted, what was not
    recorded in the database, and how to carry on."""
    say = _common.err.print
    if outcome.signal is not None:
        name = signal.Signals(outcome.signal).name
        counts = ", ".join(f"{n} {status}" for status, n in outcome.counts().items()) or "none"
        say(
            f"interrupted by {name}: {sum(outcome.counts().values())} finished ({counts}); "
            f"{len(outcome.interrupted)} cancelled in flight; {outcome.not_started} not started",
            markup=False,
        )
        if batch.batch_id is not None:
            say(f"carry on with: smallops run {wf.name} --input {path} --resume", markup=False)
    if account.set_aside:
        say(
            f"warning: the database refused {account.set_aside} run records; they are kept "
            f"with the reason in {writer.quarantine.folder} (see `smallops status`)",
            markup=False,
        )
    if account.lost:
        say(
            f"error: {account.lost} run records could not be kept, neither in the database nor "
            f"in the spool at {writer.spool.folder} (see the messages above)",
            markup=False,
        )
    if account.spooled and not writer.healthy:
        say(
            f"warning: the log database is unreachable ({writer.down_reason}); "
            f"{account.spooled} runs are kept in {writer.spool.folder} and will be written "
            "when it returns (any smallops command replays them)",
            markup=False,
        )


def _failed(wf: Workflow[Any], exc: WorkflowFailed) -> Result[Any]:
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
    from pydantic import BaseModel

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


def print_table(
    wf: Workflow[Any],
    results: list[Result[Any] | None],
    lines: list[int],
    redact: Redactor | None = None,
) -> None:
    """The results as a table (a key a provider echoed into an output or error is masked)."""
    columns = [
        Column("#", right=True),
        Column("status"),
        Column("output / error", cut_to=12),
        Column("run id"),
    ]
    rows = []
    counts: dict[str, int] = {}
    for line, result in zip(lines, results, strict=True):
        if result is None:
            continue
        if result.ok or result.status == "fallback_default":
            shown = _summary(result.output)
        else:
            shown = f"{result.error}: {result.error_message}"
        shown = (redact(shown) or shown) if redact else shown
        rows.append([str(line), result.status, shown, short_id(result.run_id)])
        counts[result.status] = counts.get(result.status, 0) + 1
    print_fitted(columns, rows, title=f"{wf.name} · prompt {wf.version.id} · {wf.model}")
    _common.out.print(", ".join(f"{n} {status}" for status, n in counts.items()), markup=False)


def _summary(output: Any) -> str:
    from pydantic import BaseModel

    if isinstance(output, BaseModel):
        return " ".join(f"{k}={v}" for k, v in output.model_dump(mode="json").items())
    return str(output)
