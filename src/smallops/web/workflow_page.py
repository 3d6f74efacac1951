"""A workflow's page (`GET /workflows/{name}?since=&until=`): its figures over a range, per day,
by prompt version and by served model."""

from __future__ import annotations

from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import Response

from smallops.dashboards.ranges import DEFAULT_SINCE, parse_range
from smallops.dashboards.workflow import workflow_figures
from smallops.errors import SmallopsError
from smallops.web import _format, charts, params
from smallops.web._http import error, guarded, render, web
from smallops.web.overview_page import day_charts

#: The ranges offered as links.
PRESETS = ("7d", "30d", "90d")


@guarded
async def workflow_page(request: Request) -> Response:
    """400 for a range it cannot read, 404 for a workflow nobody knows."""
    state = web(request)
    try:
        name = params.path(request, "name", "workflow", "the Overview at /dashboard lists them")
        since = request.query_params.get("since") or None  # parse_range reads any text
        until = request.query_params.get("until") or None
        period = parse_range(since, until, datetime.now(timezone.utc))
        data = await state.db.call(
            workflow_figures, state.desk.engine, name, state.desk.workflows, period
        )
    except SmallopsError as exc:
        return error(request, exc)
    data["range"]["asked"] = {"since": since or DEFAULT_SINCE, "until": until}
    days = data["days"]
    drawn = day_charts(name, days)
    drawn["latency"] = charts.line_chart(
        f"{name}: latency per day",
        "latency, ms",
        [row["day"] for row in days],
        [
            ("p50", [row["latency_p50_ms"] for row in days]),
            ("p95", [row["latency_p95_ms"] for row in days]),
        ],
        charts.millis,
    )
    extra = {"charts": drawn, "fmt": _format, "presets": PRESETS}
    return render(request, "workflow.html", data, extra=extra)
