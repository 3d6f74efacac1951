"""The runs browser (`/runs`) and one run (`/runs/{id}`, `smallops show`), as plain dicts.

The browser's query string is parsed here, every value checked against the closed sets it
names, so a bad address is a clear InputError (a 400) before any SQL runs. The run's record is
the one `smallops show --json` prints: the run as the log has it, its inputs and output in
reading order, and its review item with every decision on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import urlencode

from smallops import timespan
from smallops.error_types import ERROR_TYPES
from smallops.errors import InputError, NotFoundError
from smallops.ids import short_id
from smallops.kinds import STATUSES, OriginFilter
from smallops.ordering import input_names, output_names, record_in_order
from smallops.review.queue import ReviewQueue
from smallops.review.triage import input_preview, output_preview
from smallops.storage.queries import MIN_ID_GIVEN, get_run, origin_of
from smallops.storage.run_browser import MAX_PAGE, PAGE, RunFilters, browse_runs

if TYPE_CHECKING:
    from smallops.storage.db import Engine

#: The browser's query parameters: its filters, the page cursor and the page size.
Param = Literal[
    "workflow",
    "status",
    "error_type",
    "origin",
    "prompt_version",
    "since",
    "until",
    "q",
    "after",
    "limit",
]
PARAMS: tuple[Param, ...] = get_args(Param)
ORIGIN_FILTERS: tuple[OriginFilter, ...] = get_args(OriginFilter)
_RUN_ID = re.compile(r"[0-9a-fA-F-]{1,36}")
_CURSOR = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: How the run page and `show` name a content mode.
CONTENT_LABELS = {
    "full": "full",
    "redacted": "redacted (personal data masked before it was written)",
    "metadata": "metadata only (inputs, messages and outputs were not kept)",
    "pruned": "pruned (content removed by `smallops prune`)",
}

#: What the run record tells of its review item.
REVIEW_FIELDS = (
    "state",
    "reason",
    "route",
    "created_at",
    "claimed_by",
    "claimed_until",
    "decided_by",
    "decided_at",
    "final_output",
    "reject_reason",
    "history",
)

NOT_LOGGED_HINT = (
    "a run made while the database was unreachable waits in the spool and shows here once it "
    "is written; `smallops show RUN_ID` also finds a run the database refused"
)


def parse_query(params: Mapping[str, str | None]) -> dict[str, Any]:
    """The browser's parameters, checked against what each can be: the filters, `after` and
    `limit`. The values come as plain text (the web page refuses control characters and
    overlong values first, as it does for every page); unknown parameters are not read."""
    raw = {name: (params.get(name) or "").strip() for name in PARAMS}
    if raw["status"] and raw["status"] not in STATUSES:
        raise InputError(f"unknown status {raw['status']!r}", hint="use one of " + _list(STATUSES))
    if raw["error_type"] and raw["error_type"] not in ERROR_TYPES:
        raise InputError(
            f"unknown error type {raw['error_type']!r}", hint="use one of " + _list(ERROR_TYPES)
        )
    origin = raw["origin"] or "production"
    if origin not in ORIGIN_FILTERS:
        raise InputError(f"unknown origin {origin!r}", hint="use one of " + _list(ORIGIN_FILTERS))
    if raw["after"] and not _CURSOR.fullmatch(raw["after"]):
        raise InputError(
            f"the page cursor {raw['after']!r} is not a run id",
            hint="start from the first page (drop `after=` from the address)",
        )
    filters = RunFilters(
        workflow=raw["workflow"] or None,
        status=raw["status"] or None,
        error_type=raw["error_type"] or None,
        origin=origin,  # checked against ORIGIN_FILTERS above
        prompt_version=raw["prompt_version"] or None,
        since=moment(raw["since"], "since"),
        until=moment(raw["until"], "until", end_of_day=True),
        q=raw["q"] or None,
    )
    return {
        "filters": filters,
        "given": {name: raw[name] for name in PARAMS if raw[name] and name not in ("after",)},
        "after": raw["after"] or None,
        "limit": _limit(raw["limit"]),
    }


def moment(value: str, name: str, *, end_of_day: bool = False) -> datetime | None:
    """A `?since=` / `?until=` value as a moment (timespan.moment); None when empty."""
    return timespan.moment(value, f"{name}={value!r}", end_of_day=end_of_day) if value else None


def _limit(value: str) -> int:
    if not value:
        return PAGE
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PAGE:
        raise InputError(f"limit={value!r} is not a number from 1 to {MAX_PAGE}", hint="e.g. 50")
    return int(value)


def _list(names: tuple[str, ...]) -> str:
    return ", ".join(names)


def browse(
    engine: Engine,
    query: dict[str, Any],
    output_model: Callable[[str], Any],
    workflows: list[str],
) -> dict[str, Any]:
    """One page of the browser: its runs (with previews), the filters given, the address of
    the next page, and how far a bounded search got. `output_model` gives a workflow's output
    model (for the previews' field order); `workflows` are the names to offer."""
    filters: RunFilters = query["filters"]
    page = browse_runs(engine, filters, after=query["after"], limit=query["limit"])
    given: dict[str, str] = query["given"]
    next_url = None
    if page.next_after:
        next_url = "/runs?" + urlencode({**given, "after": page.next_after})
    return {
        "filters": given,
        "runs": [_summary(run, output_model) for run in page.runs],
        "next_after": page.next_after,
        "next_url": next_url,
        "first_url": "/runs?" + urlencode(given) if query["after"] else None,
        "searched_to": page.searched_to,
        "examined": page.examined,
        "choices": {
            "workflows": workflows,
            "statuses": list(STATUSES),
            "error_types": list(ERROR_TYPES),
            "origins": list(ORIGIN_FILTERS),
        },
    }


def _summary(run: dict[str, Any], output_model: Callable[[str], Any]) -> dict[str, Any]:
    """A browser row: the run's figures and short previews, no whole content."""
    fields = list(getattr(output_model(run["workflow"]), "model_fields", {}))
    served = run["model_served"]
    return {
        "id": run["id"],
        "short_id": short_id(run["id"]),
        "started_at": run["started_at"],
        "workflow": run["workflow"],
        "status": run["status"],
        "error_type": run["error_type"],
        "origin": origin_of(run),
        "model_requested": run["model_requested"],
        "model_served": served,
        "model_mismatch": served is not None and served != run["model_requested"],
        "prompt_version": run["prompt_version"],
        "latency_ms": round(run["latency_ms"], 1),
        "cost_usd": run["cost_usd"],
        "input_tokens": run["input_tokens"],
        "output_tokens": run["output_tokens"],
        "content": run["content"] or "full",
        "input_preview": input_preview(run["inputs"]),
        "output_preview": output_preview(run["output"], fields),
    }


def review_of(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """The run's review item and every action on it, or None if it was never queued."""
    try:
        item = ReviewQueue(engine).item(run_id)
    except NotFoundError:
        return None
    return {key: item[key] for key in REVIEW_FIELDS}


def run_record(
    engine: Engine, run_id: str, output_model: Callable[[str], Any] | None = None
) -> dict[str, Any]:
    """The whole record of one run, as `smallops show --json` prints it: inputs in the prompt's
    order, output in the output model's (`output_model` gives a workflow's, by name; the
    recorded schema's order otherwise), and `review`. NotFoundError (with where else to look)
    if the log has no such run; InputError if the id is too short or matches several."""
    given = run_id.strip()
    if len(given) >= MIN_ID_GIVEN and not _RUN_ID.fullmatch(given):
        raise NotFoundError(f"no run {run_id!r} in the log", hint="run ids are hex digits and -")
    try:
        run = get_run(engine, run_id)
    except NotFoundError as exc:
        raise NotFoundError(exc.message, hint=NOT_LOGGED_HINT) from None
    prompt = run["prompt"] or {}
    model = output_model(run["workflow"]) if output_model else None
    names = output_names(model, prompt.get("output_schema"))
    review = review_of(engine, run["id"])
    review = record_in_order(review, [], names) if review else None
    return {**record_in_order(run, input_names(prompt.get("template")), names), "review": review}


def attempt_line(attempt: dict[str, Any]) -> str:
    """One attempt on one line: how it ended, how long it took, and any wait before the next."""
    if attempt.get("error_type"):
        message = attempt.get("error_message")
        outcome = attempt["error_type"] + (f": {message}" if message else "")
    else:
        outcome = f"HTTP {attempt.get('status_code')}, finish={attempt.get('finish')}"
    retry = f", retried after {attempt['retry_in_s']} s" if attempt.get("retry_in_s") else ""
    return (
        f"{attempt['n']} {attempt['purpose']}: {outcome}, "
        f"{attempt.get('latency_ms', 0):.1f} ms{retry}"
    )
