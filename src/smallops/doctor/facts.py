"""What the scorecard judges: the project as it is on disk and configured, and its log.

Gathered here and judged elsewhere (tier1, tier2, tier3), so that the CLI and the web page
judge the same facts: the CLI reads the log through the project, the web page through its own
bounded database calls. A log that cannot be read is a fact too, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallops.config import Settings
from smallops.errors import SmallopsError
from smallops.storage.health import DatabaseError, first_line
from smallops.storage.practice_log import PracticeLog, practice_log

if TYPE_CHECKING:
    from smallops.storage.db import Engine
    from smallops.workflow import Workflow

#: "Recent" calls: the log shows the application is calling its workflows now.
RECENT = timedelta(days=7)
#: The window for production use, prices and drift checks: about a month.
WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Subject:
    """The project judged: its folder, settings, the workflows that loaded and the errors of
    the modules that did not."""

    root: Path
    settings: Settings
    workflows: Mapping[str, Workflow[Any]]
    broken: Sequence[SmallopsError] = ()

    @property
    def graders(self) -> set[str]:
        """Workflows other workflows' evals use as graders: eval tooling, not production."""
        return {
            name
            for wf in self.workflows.values()
            for check in wf.checks.values()
            if isinstance(name := getattr(check, "grader", None), str)
        }

    @property
    def production(self) -> list[Workflow[Any]]:
        """The workflows an application calls (graders left out), by name."""
        graders = self.graders
        return [wf for name, wf in sorted(self.workflows.items()) if name not in graders]


@dataclass(frozen=True)
class LogState:
    """The log as the scorecard sees it: its figures, or why they could not be read; and the
    runs still waiting in the spool or set aside because the database refused them."""

    figures: PracticeLog | None
    problem: str | None = None
    waiting: int = 0
    set_aside: int = 0
    where: str = "the log database"  # the URL with any password hidden

    @property
    def reachable(self) -> bool:
        return self.figures is not None


def read_log(settings: Settings, engine: Callable[[], Engine], now: datetime) -> LogState:
    """The log's figures through `engine()` (which may raise when the database is down), and
    its spool and set-aside records. Never raises for a database that cannot be read."""
    try:
        return log_state(settings, practice_log(engine(), now, RECENT, WINDOW))
    except SmallopsError as exc:
        return log_state(settings, None, exc.message)
    except DatabaseError as exc:
        where = log_state(settings, None).where
        return log_state(settings, None, f"cannot read the log database {where}: {first_line(exc)}")


def log_state(
    settings: Settings, figures: PracticeLog | None, problem: str | None = None
) -> LogState:
    """The log's figures (None when they could not be read, and why) with what waits in its
    spool and what the database refused."""
    from smallops.storage.db import safe_url

    waiting, set_aside = spooled(settings)
    return LogState(figures, problem, waiting, set_aside, safe_url(settings.database_url))


def spooled(settings: Settings) -> tuple[int, int]:
    """Runs waiting in the spool for the database, and records it refused (set aside)."""
    from smallops.storage.spool import Spool, spool_folder
    from smallops.storage.writer import quarantine_for

    try:
        url = _normalised(settings)
        quarantine = quarantine_for(settings.log)
    except SmallopsError:  # a URL that cannot be used: read_log says so
        return 0, 0
    waiting = Spool(spool_folder(settings.spool_dir, url)).waiting()
    return waiting, sum(1 for _ in quarantine.entries())


def _normalised(settings: Settings) -> str:
    from smallops.storage.db import normalise_url

    return normalise_url(settings.database_url, settings.root, settings.source("database_url"))
