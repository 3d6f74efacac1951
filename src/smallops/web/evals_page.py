"""Eval history: `GET /evals` (every eval run, newest first), `GET /evals/{eval_run_id}` (one
run's accuracy per field and confusion matrices) and `GET /evals/compare?a=&b=` (the cases that
changed between two eval runs). Each builds its dict in smallops.dashboards.eval_history."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from smallops.dashboards import eval_history
from smallops.errors import SmallopsError
from smallops.web import eval_chart, params
from smallops.web._http import error, guarded, render, web


@guarded
async def evals_page(request: Request) -> Response:
    """Eval runs a page at a time (`?workflow=`, `?before=<eval run id>` for older ones)."""
    state = web(request)
    try:
        data = await state.db.call(
            eval_history.history,
            state.desk.engine,
            workflow=params.query(request, "workflow"),
            before=params.query(request, "before"),
        )
    except SmallopsError as exc:
        return error(request, exc)
    charts = [
        (eval_chart.geometry(series), eval_chart.geometry(series, eval_chart.NARROW))
        for series in data["charts"]
    ]
    return render(request, "evals.html", data, extra={"drawn": charts})


@guarded
async def eval_run_page(request: Request) -> Response:
    """One eval run: summary, accuracy per field, confusion matrices, results."""
    state = web(request)
    try:
        eval_run_id = params.path(request, "eval_run_id", "eval run", "eval history is at /evals")
        data = await state.db.call(eval_history.eval_run_page, state.desk.engine, eval_run_id)
    except SmallopsError as exc:
        return error(request, exc)
    return render(request, "eval_run.html", data)


@guarded
async def compare_page(request: Request) -> Response:
    """The cases that changed from eval run `a` to eval run `b`, side by side."""
    state = web(request)
    try:
        a, b = params.query(request, "a"), params.query(request, "b")
        data = await state.db.call(eval_history.compare_page, state.desk.engine, a, b)
    except SmallopsError as exc:
        return error(request, exc)
    return render(request, "eval_compare.html", data)
