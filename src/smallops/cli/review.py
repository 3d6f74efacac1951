"""`smallops review`: the review queue in a terminal, for people and for scripts."""

from __future__ import annotations

import getpass
import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from smallops.cli import _common
from smallops.cli._table import SEPARATOR, Column, print_fitted
from smallops.config import evals_file
from smallops.errors import ConfigError, InputError
from smallops.ids import short_id

if TYPE_CHECKING:
    from smallops.project import Project
    from smallops.review.desk import ReviewDesk
    from smallops.review.queue import Decision

app = typer.Typer(
    help="The review queue: list, decide, measure, export.",
    no_args_is_help=True,
    context_settings=_common.HELP_WIDTH,
)

SEND_WITHIN = 5.0  # seconds a command waits for its decisions' webhooks before it exits

REVIEWER = typer.Option(
    None, "--reviewer", help="Who decides (default: $SMALLOPS_REVIEWER, else your user name)."
)


def reviewer_name(given: str | None) -> str:
    return given or os.environ.get("SMALLOPS_REVIEWER") or getpass.getuser()


def _desk(ctx: typer.Context) -> tuple[Project, ReviewDesk]:
    from smallops.review.desk import ReviewDesk

    project = _common.project(ctx)
    desk = ReviewDesk(project.engine(), project.workflows)
    ctx.call_on_close(lambda: _finish_sending(desk))
    return project, desk


def _finish_sending(desk: ReviewDesk) -> None:
    """Before the command exits: its decisions' webhooks get a few seconds, and one not sent by
    then is given back at once, for `smallops serve` or `smallops review deliver` to send."""
    for note in desk.finish_sending(SEND_WITHIN):
        _common.err.print(f"note: {note}", markup=False)


def _workflow_name(project: Project, name: str | None) -> str | None:
    return project.workflow(name).name if name else None


@app.command("list")
def list_command(
    ctx: typer.Context,
    workflow: str | None = typer.Argument(None, help="Only this workflow."),
    state: str = typer.Option(
        "pending", "--state", help="pending, approved, corrected, rejected, or all."
    ),
    limit: int = typer.Option(
        100, "--limit", "-n", min=1, max=_common.MAX_LIMIT, help="At most this many items."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per item."),
) -> None:
    """List review items, oldest pending first."""
    from smallops.ordering import in_order, output_names

    project, desk = _desk(ctx)
    items = desk.items(_workflow_name(project, workflow), None if state == "all" else state, limit)
    if as_json:
        for item in items:
            _common.print_json(_json_in_order(desk, item))
        return
    if not items:
        _common.out.print(
            f"no {state if state != 'all' else ''} review items".replace("  ", " "), markup=False
        )
        return
    order = {name: output_names(wf.output) for name, wf in desk.workflows.items()}
    rows = [
        {
            "run id": short_id(item["run_id"]),
            "workflow": item["workflow"],
            "state": item["state"],
            "why": ("fallback: " + (item["error_type"] or ""))
            if item["reason"] == "fallback"
            else item["route"],
            "output": _summary(in_order(item["output"], order.get(item["workflow"], []))),
            "claimed by": item["claimed_by"] or "",
        }
        for item in items
    ]
    columns = [
        Column("run id"),
        Column("workflow", cut_to=12, hide=2),
        Column("why", cut_to=10, hide=1),
        Column("output", cut_to=10),
    ]
    if state != "pending":
        columns.insert(2, Column("state"))
    if any(row["claimed by"] for row in rows):
        columns.append(Column("claimed by", cut_to=10, hide=3))
    print_fitted(columns, [[row[column.name] for column in columns] for row in rows])


def _json_in_order(desk: ReviewDesk, item: dict[str, Any]) -> dict[str, Any]:
    """An item for --json, its fields in the order the human views use (JSONB sorts them)."""
    from smallops.ordering import input_names, output_names, record_in_order

    workflow = desk.workflows.get(item["workflow"])
    if workflow is None:
        return item
    return record_in_order(
        item, input_names(workflow.version.template), output_names(workflow.output)
    )


@app.command("next")
def next_command(
    ctx: typer.Context,
    workflow: str | None = typer.Argument(None, help="Only this workflow."),
    reviewer: str | None = REVIEWER,
) -> None:
    """Review items one by one: approve, correct in $EDITOR, reject with a reason, or skip.

    A skipped item waits for the next session: each item comes up once, and when only skipped
    ones are left the review ends.
    """
    from smallops.ordering import item_in_order

    project, desk = _desk(ctx)
    name = reviewer_name(reviewer)
    only = _workflow_name(project, workflow)
    decided = 0
    skipped: set[str] = set()
    held: str | None = None  # the item this session holds, given back however it ends
    try:
        with _common.Hangups() as hangups:
            while True:
                with hangups.held():
                    claimed = desk.claim_next(name, only, exclude=skipped)
                    held = claimed["run_id"] if claimed else None
                if claimed is None:
                    _common.out.print(
                        f"nothing new in the queue ({len(skipped)} skipped, still pending)"
                        if skipped
                        else "the queue is empty",
                        markup=False,
                    )
                    break
                item = item_in_order(claimed)
                _show(item)
                outcome = _ask(desk, item, name)
                if outcome == "quit":
                    desk.queue.release(item["run_id"], name, action="release")
                    break
                held = None
                if outcome == "skipped":
                    skipped.add(item["run_id"])
                decided += outcome == "decided"
    except (KeyboardInterrupt, _common.Hangup):
        if held is not None:
            desk.unclaim({held: name})  # a no-op if it was decided or given back meanwhile
        raise
    _common.out.print(f"{decided} decided as {name}", markup=False)


def _show(item: dict[str, Any]) -> None:
    say = _common.out.print
    say(
        f"\n[bold]{escape(item['workflow'])}[/bold]  run {item['run_id']}  ({item['route']}"
        + (
            f", the model failed: {escape(item['error_type'] or '')}"
            if item["reason"] == "fallback"
            else ""
        )
        + ")"
    )
    _common.section("input")
    _common.print_fields(item["inputs"])
    _common.section("output")
    _common.print_fields(item["output"])


KEYS = "[a]pprove [c]orrect [r]eject [s]kip [q]uit"


def _ask(desk: ReviewDesk, item: dict[str, Any], name: str) -> str:
    """One decision from the keyboard: 'decided', 'skipped' or 'quit'. No key is the default
    (Enter asks again); the end of the input, or Ctrl-C, quits and gives the item back."""
    run_id = item["run_id"]
    while True:
        try:
            key = typer.prompt(KEYS).strip()[:1].lower()
            if key == "a":
                _done(desk.approve(run_id, name))
            elif key == "c":
                _done(desk.correct(run_id, name, _edit(item["output"])))
            elif key == "r":
                _done(desk.reject(run_id, name, typer.prompt("reason")))
            elif key == "s":
                desk.skip(run_id, name)
                return "skipped"
            elif key == "q":
                return "quit"
            else:
                continue
            return "decided"
        except InputError as exc:
            _common.err.print(f"error: {exc}", markup=False)
        except typer.Abort:
            _common.out.print("", markup=False)
            return "quit"


def _edit(output: Any) -> Any:
    """The output, as the reviewer leaves it in $VISUAL / $EDITOR."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    text = output if isinstance(output, str) else json.dumps(output, indent=2, ensure_ascii=False)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        f.write(text + "\n")
    path = Path(f.name)
    try:
        if subprocess.run([*shlex.split(editor), str(path)], check=False).returncode != 0:
            raise InputError(f"the editor ({editor}) exited with an error; nothing was changed")
        edited = path.read_text(encoding="utf-8")
    finally:
        path.unlink(missing_ok=True)
    return edited.strip()


def _done(decision: Decision) -> None:
    _common.out.print(
        f"{decision.status} run {short_id(decision.run_id)} ({decision.workflow}) "
        f"as {decision.reviewer}",
        markup=False,
    )


def _decide(
    ctx: typer.Context,
    run_id: str,
    action: str,
    name: str | None,
    *,
    output: str | None = None,
    reason: str | None = None,
    as_json: bool = False,
) -> None:
    _, desk = _desk(ctx)
    full = desk.queue.resolve(run_id)
    who = reviewer_name(name)
    if action == "approve":
        decision = desk.approve(full, who)
    elif action == "correct":
        if output is None:
            raise InputError("correct needs the corrected output", hint="--output '{...}'")
        decision = desk.correct(full, who, output)
    else:
        decision = desk.reject(full, who, reason)
    if as_json:
        _common.print_json(decision.__dict__)
    else:
        _done(decision)


@app.command("approve")
def approve_command(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help=_common.RUN_ID_HELP),
    reviewer: str | None = REVIEWER,
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Approve the model's output as it is."""
    _decide(ctx, run_id, "approve", reviewer, as_json=as_json)


@app.command("correct")
def correct_command(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help=_common.RUN_ID_HELP),
    output: str | None = typer.Option(
        None, "--output", help="The corrected output as JSON (text for free-text workflows)."
    ),
    reviewer: str | None = REVIEWER,
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Replace the output with a corrected one, checked against the workflow's schema."""
    _decide(ctx, run_id, "correct", reviewer, output=output, as_json=as_json)


@app.command("reject")
def reject_command(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help=_common.RUN_ID_HELP),
    reason: str | None = typer.Option(None, "--reason", help="Why (required)."),
    reviewer: str | None = REVIEWER,
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Reject the output; a reason is required."""
    _decide(ctx, run_id, "reject", reviewer, reason=reason, as_json=as_json)


@app.command("stats")
def stats_command(
    ctx: typer.Context,
    workflow: str | None = typer.Argument(None, help="Only this workflow."),
    as_json: bool = typer.Option(False, "--json", help="A JSON array, one object per class."),
) -> None:
    """Per workflow and output class: reviews, approvals, the 95% lower bound, a recommendation.

    Counts what routing counts: reviews of outputs made with each workflow's current prompt
    version, per served model, since the class's latest demotion. Graduation restarts with each
    prompt version: reviews of earlier versions are listed, and do not count. The bound is the
    one-sided 95% Clopper-Pearson lower bound on approvals without edits.
    """
    from smallops.review.evidence import earlier_versions, workflow_stats
    from smallops.storage.graduation_log import graduation_history

    project, desk = _desk(ctx)
    chosen = [project.workflow(workflow)] if workflow else list(project.workflows.values())
    rows, history, earlier = [], [], {}
    for wf in chosen:
        earlier[wf.name] = earlier_versions(desk.engine, wf.name, wf.version.id)
        for row in workflow_stats(desk.engine, wf):
            rows.append(
                {**row.__dict__, "policy": str(wf.review), "earlier_reviews": earlier[wf.name]}
            )
        history += graduation_history(desk.engine, wf.name)
    if as_json:
        _common.print_json(rows)
        return
    _print_stats(rows, history, earlier)


#: `review stats` per output class: the status (auto or review) is never cut.
STATS_COLUMNS = (
    Column("class", cut_to=16),
    Column("reviews", right=True),
    Column("approved", right=True, hide=3),
    Column("lower bound", right=True, hide=2),
    Column("days", right=True, hide=4),
    Column("status"),
    Column("recommendation", cut_to=12, hide=1),
)


def _print_stats(
    rows: list[dict[str, Any]], history: list[dict[str, Any]], earlier: dict[str, dict[str, int]]
) -> None:
    """One table per workflow, prompt version and served model: the evidence each counts."""
    if not rows:
        _common.out.print(
            "no output classes: the workflows have no enum or Literal fields", markup=False
        )
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["workflow"], row["prompt_version"], row["model"]), []).append(row)
    for (workflow, version, model), group in groups.items():
        _common.out.print("", markup=False)
        title = SEPARATOR.join((workflow, f"prompt version {version}", f"served by {model}"))
        cells = [
            [
                row["class_key"],
                str(row["reviews"]),
                str(row["approvals"]),
                f"{row['lower_bound']:.3f}",
                f"{row['days']:g}",
                "auto" if row["graduated"] else "review",
                row["recommendation"],
            ]
            for row in group
        ]
        print_fitted(STATS_COLUMNS, cells, title)
    for name, versions in earlier.items():
        if versions:
            counts = ", ".join(f"{version}: {n} reviews" for version, n in versions.items())
            _common.out.print(
                f"\n{name}: graduation restarts with each prompt version; reviews of earlier "
                f"versions do not count ({counts})",
                markup=False,
            )
    if history:
        _common.out.print("\n[bold]promotions and demotions[/bold]")
        for event in history[-20:]:
            model = f" on {event['model']}" if event["model"] else ""
            _common.out.print(
                f"  {_common.when(event['at'])}  {event['workflow']}  {event['action']:<7} "
                f"{event['class_key']}{model}: {event['reason']}",
                markup=False,
            )


@app.command("export")
def export_command(
    ctx: typer.Context,
    workflow: str = typer.Argument(..., help="The workflow whose reviewed items to export."),
    to: Path | None = typer.Option(
        None, "--to", help="The eval file (default: evals/<workflow>.jsonl in the project)."
    ),
) -> None:
    """Append approved and corrected items to the workflow's eval set, without duplicates."""
    from smallops.review.export import export_reviewed

    project, desk = _desk(ctx)
    wf = project.workflow(workflow)
    target = to or evals_file(project.root, wf.name)
    done = export_reviewed(desk.queue, wf, target)
    _common.out.print(
        f"{done.added} cases added to {target} ({done.kept} already there)", markup=False
    )
    if done.skipped:
        run_id, why = done.skipped[0]
        _common.err.print(
            f"note: {len(done.skipped)} reviewed items skipped: they would not be valid eval "
            f"cases (run {run_id}: {why})",
            markup=False,
        )


@app.command("deliver")
def deliver_command(ctx: typer.Context) -> None:
    """Send the decision webhooks that are due (`smallops serve` also does, continuously)."""
    from smallops.review import webhooks

    project, desk = _desk(ctx)
    secrets, problems = webhooks.signing_secrets(project.workflows.values())
    delivered, failed = webhooks.deliver_due(desk.engine, secrets)
    _common.out.print(f"{delivered} delivered, {failed} to retry later", markup=False)
    waiting = webhooks.waiting(desk.engine)
    unknown = sorted(set(waiting) - set(project.workflows))
    if unknown:
        _common.err.print(
            f"note: {sum(waiting[name] for name in unknown)} webhooks wait for workflows this "
            f"project does not define ({', '.join(unknown)}); they are not sent",
            markup=False,
        )
    unsigned = [
        f"{waiting[n]} of {n} ({why})" for n, why in sorted(problems.items()) if n in waiting
    ]
    if unsigned:
        raise ConfigError(f"webhooks not sent: {', '.join(unsigned)}", hint=webhooks.SECRET_HINT)
    if failed:
        raise typer.Exit(1)


@app.command("hash-password")
def hash_password_command() -> None:
    """Make a password hash for a reviewer in smallops.toml ([reviewers] name = "scrypt$...")."""
    try:
        from smallops.web.auth import hash_password
    except ImportError as exc:  # pragma: no cover - the web package ships with smallops
        raise ConfigError(f"cannot load the web module: {exc}") from None
    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise InputError("use a password of at least 8 characters")
    _common.out.print(hash_password(password), markup=False)


def _summary(output: Any) -> str:
    if isinstance(output, dict):
        return " ".join(f"{k}={v}" for k, v in output.items())
    return "" if output is None else str(output)
