"""The queue page (`GET /`) and `POST /next`, which claims the next item for the reviewer.

Skipped items are remembered in a cookie for the session, so "next" moves past them instead of
handing the same oldest item straight back; "Start reviewing" forgets them and starts over. A
reviewer holds one item at a time: claiming one gives back the one they held before.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from smallops.errors import SmallopsError
from smallops.review import triage
from smallops.review.desk import ReviewDesk
from smallops.review.queue import DecidedError, HeldError
from smallops.storage.review_log import QueueOrder
from smallops.web import params
from smallops.web._http import (
    JSON,
    Web,
    body,
    error,
    guarded,
    redirect,
    render,
    reviewer,
    wants_json,
    web,
)
from smallops.web.outage import DatabaseDown
from smallops.web.pending import PendingCounts, counted_from_page

SKIPPED_COOKIE = "smallops_skipped"
MAX_SKIPPED = 30
PAGE = 50  # items a queue page shows; the next page follows by keyset (?after=)
NOTES = {"empty": "The queue is empty: nothing left to review."}
DONE = {
    "approve": "Approved",
    "correct": "Saved the correction to",
    "reject": "Rejected",
    "skip": "Skipped",
}


@guarded
async def queue_page(request: Request) -> Response:
    """Items per workflow in a state (pending by default, oldest first), with previews of their
    input and output, their age and who holds which; sorted by age or an output field over the
    whole queue, PAGE at a time."""
    desk, db = web(request).desk, web(request).db
    try:
        workflow = params.query(request, "workflow")
        state = params.query(request, "state") or "pending"
        sort = params.query(request, "sort")
        shown = {n: w for n, w in output_models(desk).items() if workflow in (None, n)}
        states = triage.states_for(state)
        order = triage.queue_order(sort, shown)
        after = triage.after_cursor(params.query(request, "after", "the page cursor (?after=)"))
    except SmallopsError as exc:
        return error(request, exc)
    counts, items = await db.call(
        queue_view, desk, web(request).pending, workflow, states, order, after
    )
    more, items = len(items) > PAGE, items[:PAGE]
    now = datetime.now(timezone.utc)
    for item in items:
        until = item.get("claimed_until")
        item["held_by"] = item["claimed_by"] if until is not None and until > now else None
        triage.annotate(item, now, output_model(desk, item["workflow"]))
    skipped = [i for i in skipped_ids(request) if i in {item["run_id"] for item in items}]
    query = {"workflow": workflow, "state": state if state != "pending" else None, "sort": sort}
    data = {
        "reviewer": reviewer(request),
        "workflow": workflow,
        "counts": counts,
        "total": sum(counts.values()),
        "state": state,
        "states": list(triage.STATE_FILTERS),
        "sort": sort,
        "sorts": sort_choices(shown),
        "items": [{k: v for k, v in item.items() if k != "sort_key"} for item in items],
        "first_page": page_url(query) if after is not None else None,
        "next_page": page_url(query, triage.cursor_of(items[-1]["sort_key"])) if more else None,
        "skipped": skipped,
        "note": NOTES.get(request.query_params.get("note", "")),
        "done": done_message(request),
    }
    return render(request, "queue.html", data)


def queue_view(
    desk: ReviewDesk,
    pending: PendingCounts,
    workflow: str | None,
    states: tuple[str, ...] | None,
    order: QueueOrder | None,
    after: list[Any] | None,
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The pending counts per workflow and one page of items (PAGE + 1, to tell whether more
    follow), in one trip to a database thread over one connection. The counts are the ones this
    server read in the last few seconds, or read now; those of a pending queue the page shows
    whole come from the page."""
    kept = pending.recent()
    read_at = time.monotonic()
    counts, items = desk.queue.page(
        workflow, state=states, limit=PAGE + 1, order=order, after=after, counts=kept is None
    )
    if counts is not None:
        pending.keep(counts, read_at)
    counts = counts if counts is not None else kept or {}
    if states == ("pending",) and after is None and len(items) <= PAGE:
        counts = counted_from_page(counts, items, workflow)
    return counts, items


def output_models(desk: ReviewDesk) -> dict[str, Any]:
    """Each workflow the desk knows, with its output model (None for free text)."""
    return {name: known.output for name, known in desk.workflows.items()}


def output_model(desk: ReviewDesk, workflow: str) -> Any:
    """The output model of a workflow the desk knows (None for others and free text)."""
    known = desk.workflows.get(workflow)
    return known.output if known is not None else None


def sort_choices(models: dict[str, Any]) -> list[str]:
    """The `?sort=` values to offer: by age, then each enum/Literal output field (an
    ops lead sorts by urgency, not by summary)."""
    fields = triage.sortable_fields(models.values())
    return [*triage.AGE_SORTS, *(f for field in fields for f in (field, "-" + field))]


def page_url(query: dict[str, str | None], after: str | None = None) -> str:
    """The queue page with these filters, from the start or after a cursor."""
    kept = {key: value for key, value in {**query, "after": after}.items() if value}
    return "/" + ("?" + urlencode(kept) if kept else "")


@guarded
async def next_item(request: Request) -> Response:
    """Claim the next item (optionally of one workflow) and go to it; forget earlier skips."""
    state = web(request)
    try:
        form = await body(request)
        workflow = params.form_text(form, "workflow")
        run_id = await state.db.call(state.desk.claim_next_id, reviewer(request), workflow)
    except SmallopsError as exc:
        return error(request, exc)
    if run_id:
        await moved_on(state, run_id, reviewer(request))
    response = to_next(request, run_id, workflow)
    response.delete_cookie(SKIPPED_COOKIE)
    return response


async def moved_on(state: Web, run_id: str, name: str) -> None:
    """`name` has just claimed `run_id`: give back the item they held before, if any, so one
    reviewer never sits on a trail of leases. If the database fails now, those expire."""
    before = state.leases.claimed(run_id, name)
    if before:
        with contextlib.suppress(DatabaseDown):
            await state.db.call(state.desk.unclaim, before)


def claim_next(desk: ReviewDesk, name: str, workflow: str | None, exclude: set[str]) -> str | None:
    """Claim the next item for `name`, passing over the ones it skipped this session; its run
    id (the page that shows it reads it), or None when there is none."""
    if not exclude:
        return desk.claim_next_id(name, workflow)
    now = datetime.now(timezone.utc)
    for item in desk.items(workflow, "pending", 500):
        until = item["claimed_until"]
        held = item["claimed_by"] not in (None, name) and until is not None and until > now
        if item["run_id"] in exclude or held:
            continue
        try:
            desk.claim_id(item["run_id"], name)
        except (HeldError, DecidedError):  # taken a moment ago by someone else
            continue
        return str(item["run_id"])
    return None


def skipped_ids(request: Request) -> list[str]:
    raw = request.cookies.get(SKIPPED_COOKIE, "")
    return [part for part in raw.split(",") if part][-MAX_SKIPPED:]


def remember_skip(request: Request, response: Response, run_id: str) -> None:
    ids = [i for i in skipped_ids(request) if i != run_id] + [run_id]
    response.set_cookie(SKIPPED_COOKIE, ",".join(ids[-MAX_SKIPPED:]), httponly=True, samesite="lax")


def done_message(request: Request) -> str | None:
    """ "Approved 0190ab12…": what the last action did, for the page that follows it."""
    action, run_id = request.query_params.get("done"), request.query_params.get("prev", "")
    return done_text(action, run_id)


def done_text(action: str | None, run_id: str) -> str | None:
    if action not in DONE:
        return None
    return f"{DONE[action]} run {run_id[-12:]}." if run_id else f"{DONE[action]}."


def to_next(
    request: Request,
    run_id: str | None,
    workflow: str | None,
    *,
    done: str | None = None,
    data: dict[str, Any] | None = None,
) -> Response:
    """Where a reviewer goes next: a 303 to the next item (or the queue) for a browser; for
    JSON, the next item's id next to whatever the action returned."""
    if wants_json(request):
        url = f"/items/{run_id}" if run_id else None
        return JSON({**(data or {}), "next": run_id, "url": url})
    query: dict[str, str] = {}
    if done:
        query.update(done=done, prev=request.path_params.get("run_id", ""))
    if workflow:
        query["workflow"] = workflow
    if run_id is None:
        query["note"] = "empty"
    target = f"/items/{run_id}" if run_id else "/"
    return redirect(target + ("?" + urlencode(query) if query else ""))
