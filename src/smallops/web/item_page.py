"""One item (`GET /items/{run_id}`), claiming it (`POST /items/{run_id}/claim`) and the
decisions on it (`POST /items/{run_id}/{action}`).

Viewing an item only reads it: a link from anywhere changes nothing. Claiming it is a POST,
CSRF-checked like a decision, and keeps other reviewers off it; "Start reviewing" and every
decision claim the next item the same way. The output is a form built from the workflow's
schema; a correction is parsed back from that form (or taken from a JSON body) and validated by
the desk, which changes nothing when it does not fit. An output that does not fit the schema
(cut off, unparseable, the wrong fields) cannot be approved, only corrected or rejected. After
a decision the reviewer goes straight to the next item. A decision that failed with the
database says it was not saved; one saved when the next item could not be loaded says it was.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from smallops.errors import InputError, NotFoundError, SmallopsError, Unapprovable
from smallops.jsonl import parse
from smallops.ordering import item_in_order
from smallops.review.desk import ReviewDesk
from smallops.review.queue import DecidedError, Decision, HeldError
from smallops.web import params
from smallops.web._http import (
    JSON,
    body,
    error,
    guarded,
    redirect,
    render,
    reviewer,
    status_of,
    wants_json,
    web,
)
from smallops.web.outage import UNREACHABLE, DatabaseDown
from smallops.web.queue_page import (
    claim_next,
    done_message,
    done_text,
    moved_on,
    remember_skip,
    skipped_ids,
    to_next,
)

ACTIONS = ("approve", "correct", "reject", "skip")
PREFIX = "out."  # form fields of the output, apart from csrf, reason and workflow
NULL_PREFIX = "null."  # the "null" checkbox beside a nullable field
NOT_APPROVABLE = "correct it with output that fits, or reject it; nothing was changed"
LONG_TEXT = 200  # a string whose maxLength is over this gets a textarea; shorter, one line
# A string with no maxLength is one line unless its name says it holds prose.
PROSE_NAMES = frozenset(
    {
        "summary",
        "description",
        "body",
        "text",
        "content",
        "notes",
        "reply",
        "draft",
        "message",
        "explanation",
        "details",
        "comment",
        "answer",
        "response",
    }
)
SHORTCUTS = [
    ("a", "approve"),
    ("c", "save correction"),
    ("r", "reject (type a reason, Enter)"),
    ("s", "skip"),
    ("1-9", "pick a choice"),
    ("Esc", "leave a text box"),
]


@guarded
async def item_page(request: Request) -> Response:
    """The item as it stands; reading it claims nothing."""
    state = web(request)
    try:
        run_id = item_id(request)
        workflow = params.query(request, "workflow")  # posted back with a decision, then filters
        item = await state.db.call(state.desk.item, run_id)
    except (NotFoundError, InputError) as exc:
        return error(request, exc)
    return show(request, item, workflow=workflow)


@guarded
async def claim(request: Request) -> Response:
    """Claim the item for this reviewer (giving back the one they held before), then show it;
    a 409 if someone else holds it or it is decided."""
    name, state = reviewer(request), web(request)
    try:
        run_id = item_id(request)
        form = await body(request)
        workflow = params.form_text(form, "workflow")
    except SmallopsError as exc:
        return error(request, exc)
    try:
        item = await state.db.call(state.desk.claim, run_id, name)
    except (HeldError, DecidedError) as exc:
        held = await state.db.call(state.desk.item, run_id)
        return show(request, held, problem=exc, status=409, workflow=workflow)
    except SmallopsError as exc:
        return error(request, exc)
    await moved_on(state, run_id, name)
    if wants_json(request):
        return show(request, item, workflow=workflow)
    return redirect(
        f"/items/{run_id}" + ("?" + urlencode({"workflow": workflow}) if workflow else "")
    )


@guarded
async def act(request: Request) -> Response:
    """Approve, correct, reject or skip; then on to the next item. Errors change nothing."""
    action = request.path_params["action"]
    if action not in ACTIONS:
        unknown = NotFoundError(f"no action {params.shown(action)}", hint=", ".join(ACTIONS))
        return error(request, unknown)
    state, name = web(request), reviewer(request)
    desk, db = state.desk, state.db
    try:
        run_id = item_id(request)
        form = await body(request)
        workflow = params.form_text(form, "workflow")  # checked before anything is saved
    except SmallopsError as exc:
        return error(request, exc)
    skipped = set(skipped_ids(request)) | ({run_id} if action == "skip" else set())
    try:
        decision, following = await db.save_then(
            functools.partial(decide, desk, action, run_id, name, form),
            functools.partial(claim_next, desk, name, workflow, skipped),
        )
    except SmallopsError as exc:
        if wants_json(request) or isinstance(exc, (NotFoundError, DatabaseDown)):
            return error(request, exc)
        item = await db.call(desk.item, run_id)
        values = form if action == "correct" else None
        status = status_of(exc)
        return show(request, item, problem=exc, status=status, values=values, workflow=workflow)
    state.leases.settled(run_id)
    data = {"action": action, "run_id": run_id, "decision": decision, "saved": True}
    if isinstance(following, DatabaseDown):
        response = saved_without_next(request, action, run_id, data)
    else:
        if following:
            await moved_on(state, following, name)
        response = to_next(request, following, workflow, done=action, data=data)
    if action == "skip":
        remember_skip(request, response, run_id)
    return response


def saved_without_next(
    request: Request, action: str, run_id: str, data: dict[str, Any]
) -> Response:
    """The decision is saved but the next item could not be loaded: say both, in a 200."""
    if wants_json(request):
        note = f"saved; the next item could not be loaded: {UNREACHABLE}"
        return JSON({**data, "next": None, "url": None, "note": note})
    page = {
        "done": f"{done_text(action, run_id)} Saved.",
        "error": f"The queue could not be loaded: {UNREACHABLE}.",
        "hint": "Reload the queue in a moment.",
    }
    return render(request, "error.html", page)


def decide(
    desk: ReviewDesk, action: str, run_id: str, name: str, form: dict[str, Any]
) -> Decision | None:
    """Call the desk for one action; a correction comes from the form or a JSON `output`."""
    if action == "approve":
        try:
            return desk.approve(run_id, name)
        except Unapprovable as exc:  # said the way this page says it
            raise InputError(exc.message, hint=NOT_APPROVABLE) from None
    if action == "reject":
        return desk.reject(run_id, name, str(form.get("reason") or ""))
    if action == "skip":
        desk.skip(run_id, name)
        return None
    output = form["output"] if "output" in form else output_from_form(desk.item(run_id), form)
    return desk.correct(run_id, name, output)


def item_id(request: Request) -> str:
    """The run id in the path; a 404 for one no run can have."""
    return params.path(request, "run_id", "review item for run", "the queue at / lists them")


def show(
    request: Request,
    item: dict[str, Any],
    *,
    problem: SmallopsError | None = None,
    status: int = 200,
    values: dict[str, Any] | None = None,
    workflow: str | None = None,
) -> Response:
    """The item page; after a refused action, with the error and the reviewer's own input.
    `workflow` is the queue filter the reviewer came with (checked: it is posted back).

    `held_by` is who holds it now; `yours` whether that is this reviewer (if nobody does, the
    page offers to claim it); `read_only` whether it cannot be decided (decided, or held by
    someone else); `cannot_approve` why Approve is off, if it is."""
    item = item_in_order(item)  # Postgres hands JSON objects back with their keys sorted
    name = reviewer(request)
    until = item["claimed_until"]
    held_by = item["claimed_by"] if until is not None and until > _now() else None
    pending = item["state"] == "pending"
    data = {
        "item": item,
        "held_by": held_by if pending else None,
        "yours": pending and held_by == name,
        "read_only": not pending or held_by not in (None, name),
        "cannot_approve": web(request).desk.approvable(item) if pending else None,
        "error": problem.message if problem else None,
        "hint": problem.hint if problem else None,
        "workflow": workflow,
    }
    form = form_view(item, values)
    extra = {
        "form": form,
        "first_choice": next((f["key"] for f in form if f["widget"] == "choice"), ""),
        "free_text_value": _free_text(item, values),
        "done": done_message(request),
        "shortcuts": SHORTCUTS,
        "pretty": _pretty,
        "reason_value": (values or {}).get("reason", ""),
    }
    return render(request, "item.html", data, status, extra)


def form_view(item: dict[str, Any], values: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The schema's fields with the widget each calls for, the text it shows and, for a
    nullable field, whether its "null" box is ticked."""
    output = item["output"] if isinstance(item["output"], dict) else {}
    view = []
    for field in item["fields"]:
        name, widget = field["name"], _widget(field)
        if values:
            text = str(values.get(PREFIX + name, ""))
            null = bool(values.get(NULL_PREFIX + name))
        else:
            value = output.get(name)
            text = _lines(value) if widget == "list" else _text(value)
            null = name in output and value is None
        options = [_text(c) for c in _choices(field)] if widget == "choice" else []
        view.append(
            {
                **field,
                "widget": widget,
                "key": PREFIX + name,
                "null_key": NULL_PREFIX + name,
                "null": bool(field.get("nullable")) and null,
                "text": text,
                "options": options,
            }
        )
    return view


def output_from_form(item: dict[str, Any], form: dict[str, Any]) -> Any:
    """The corrected output from the form's fields: numbers, booleans and JSON parsed, a list
    of strings one entry per line, a ticked "null" box None. The desk validates the result."""
    if not item["fields"]:
        return form.get("output", "")  # free text, or JSON for a workflow not defined here
    output: dict[str, Any] = {}
    for field in item["fields"]:
        name = field["name"]
        if field.get("nullable") and form.get(NULL_PREFIX + name):
            output[name] = None
            continue
        raw = form.get(PREFIX + name)
        if raw is None:
            continue  # absent: the schema's default, or its "field required"
        if _widget(field) == "list":
            entries = _entries(str(raw))
            if entries or field["required"]:
                output[name] = entries
            continue
        if raw == "" and not field["required"]:
            continue  # cleared: the schema's default
        output[name] = _parse(field, str(raw))
    return output


def _entries(raw: str) -> Any:
    """A list editor's text: one entry per line, blank lines dropped; a JSON array as a whole
    (what a script, or this form before it had a list editor, sends) is taken as it is."""
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(value, list):
                return value
    return [line.strip() for line in raw.splitlines() if line.strip()]


def _parse(field: dict[str, Any], raw: str) -> Any:
    kind, title = field["type"], field["title"]
    if kind in ("array", "object"):
        return parse(raw, title)
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
    except ValueError:
        what = "a whole number" if kind == "integer" else "a number"
        raise InputError(f"{title}: {raw!r} is not {what}", hint="nothing was changed") from None
    if kind in ("choice", "boolean"):
        return next((c for c in _choices(field) if _text(c) == raw), raw)
    return raw


def _choices(field: dict[str, Any]) -> list[Any]:
    return list(field["choices"]) or ([True, False] if field["type"] == "boolean" else [])


def _widget(field: dict[str, Any]) -> str:
    """choice, number, list (a list of strings), json (other arrays and objects), input (one
    line) or textarea (a maxLength over LONG_TEXT, or no maxLength and a name of prose)."""
    kind = field["type"]
    if kind in ("choice", "boolean"):
        return "choice"
    if kind in ("integer", "number"):
        return "number"
    if kind == "array" and field.get("items") == "string":
        return "list"
    if kind in ("array", "object"):
        return "json"
    limit = field.get("max_length")
    if limit is None:
        return "textarea" if field["name"].lower() in PROSE_NAMES else "input"
    return "textarea" if limit > LONG_TEXT else "input"


def _lines(value: Any) -> str:
    """A list of strings as the list editor's text: one entry per line."""
    if isinstance(value, list):
        return "\n".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    return _text(value)


def _text(value: Any) -> str:
    """A value as the text a form field shows."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, indent=2, ensure_ascii=False)
    return str(value)


def _free_text(item: dict[str, Any], values: dict[str, Any] | None) -> str:
    if values is not None:
        return str(values.get("output", ""))
    output = item["output"]
    return output if isinstance(output, str) else _pretty(output)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _pretty(value: Any) -> str:
    """Any recorded value as readable text: strings as they are, the rest as indented JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
