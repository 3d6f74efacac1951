"""The Overview (`GET /dashboard`): every workflow's week at a glance, with its trend."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

from smallops.dashboards.overview import overview
from smallops.web import _format, charts
from smallops.web._http import guarded, render, web
from smallops.web.alerts_page import open_alerts


@guarded
async def overview_page(request: Request) -> Response:
    """Calls, cost, latency, error rates, review backlog and guards per workflow."""
    state = web(request)
    data = await state.db.call(overview, state.desk.engine, state.desk.workflows)
    data["alerts"] = await state.db.call(open_alerts, state.desk.engine)
    drawn = {row["workflow"]: day_charts(row["workflow"], row["days"]) for row in data["workflows"]}
    return render(request, "overview.html", data, extra={"charts": drawn, "fmt": _format})


def day_charts(workflow: str, days: list[dict[str, Any]]) -> dict[str, Markup]:
    """Calls per day and cost per day as bar charts; today's bar is lighter (the day is not
    over)."""
    labels = [row["day"] for row in days]
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return {
        "calls": charts.bar_chart(
            f"{workflow}: production calls per day",
            "calls / day",
            labels,
            [row["calls"] for row in days],
            charts.count,
            partial=today,
        ),
        "cost": charts.bar_chart(
            f"{workflow}: cost of the priced calls per day",
            "USD / day",
            labels,
            [row["cost_usd"] for row in days],
            charts.dollars,
            partial=today,
        ),
    }
