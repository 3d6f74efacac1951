"""The runs browser (`GET /runs`) and one run (`GET /runs/{run_id}`): read-only pages over the
log, each one dict from smallops.dashboards.runs, answered as HTML or JSON."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from smallops.dashboards import runs
from smallops.errors import SmallopsError
from smallops.web import params
from smallops.web._http import error, guarded, render, web
from smallops.web.queue_page import output_model


@guarded
async def runs_page(request: Request) -> Response:
    """Runs newest first, filtered, a keyset page at a time; a bad filter is a 400."""
    state = web(request)
    desk = state.desk
    try:
        query = runs.parse_query({name: params.query(request, name) for name in runs.PARAMS})
        data = await state.db.call(
            runs.browse,
            desk.engine,
            query,
            lambda name: output_model(desk, name),
            sorted(desk.workflows),
        )
    except SmallopsError as exc:
        return error(request, exc)
    return render(request, "runs.html", data)


@guarded
async def run_page(request: Request) -> Response:
    """One run: `smallops show --json`'s record as JSON, or the page that reads it."""
    state = web(request)
    desk = state.desk
    try:
        record = await state.db.call(
            runs.run_record,
            desk.engine,
            params.path(request, "run_id", "run", "the runs browser at /runs lists them"),
            lambda name: output_model(desk, name),
        )
    except SmallopsError as exc:
        return error(request, exc)
    extra = {
        "run": record,
        "content_labels": runs.CONTENT_LABELS,
        "pretty": pretty,
    }
    return render(request, "run.html", record, extra=extra)


def pretty(value: Any) -> str:
    """Any recorded value as readable text: strings as they are, the rest as indented JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
