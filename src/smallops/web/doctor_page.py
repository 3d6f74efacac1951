"""The scorecard (`GET /doctor`): the playbook's practices for this project, as `smallops
doctor` shows them, from the same facts; `?tier=1|2|3` picks the tier judged (3 by default)."""

from __future__ import annotations

from datetime import datetime, timezone

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from smallops.config import Settings
from smallops.doctor import TIERS, Subject, Tier, judge
from smallops.doctor.facts import RECENT, WINDOW, LogState, log_state
from smallops.errors import InputError
from smallops.storage.practice_log import PracticeLog, practice_log
from smallops.web._http import guarded, render, web
from smallops.web.outage import DatabaseDown


@guarded
async def doctor_page(request: Request) -> Response:
    """Each tier's practices: pass, warn or fail, the evidence and the fix."""
    state = web(request)
    settings: Settings = request.app.state.settings
    target = _tier(request.query_params.get("tier"))
    now = datetime.now(timezone.utc)
    figures: PracticeLog | None = None
    problem: str | None = None
    try:
        figures = await state.db.call(practice_log, state.desk.engine, now, RECENT, WINDOW)
    except DatabaseDown:  # the log failing is a finding of the scorecard, not a 503
        problem = "the log database does not answer"
    subject = Subject(settings.root, settings, state.desk.workflows)

    def score() -> dict[str, object]:  # reads eval sets, baselines and CI files
        log: LogState = log_state(settings, figures, problem)
        return judge(subject, log, now).as_dict(target)

    data = await anyio.to_thread.run_sync(score)
    return render(request, "doctor.html", data)


def _tier(given: str | None) -> Tier:
    if given is None or given == "":
        return 3
    if given not in ("1", "2", "3"):
        raise InputError(
            f"tier {given[:20]!r} is not one of 1, 2, 3",
            hint="1 under 10 people, 2 for 10 to 25, 3 for 25 to 50",
        )
    return TIERS[int(given) - 1]
