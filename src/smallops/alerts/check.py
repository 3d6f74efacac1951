"""One round of alerting: check the rules, bring the alerts in line, send what is due.

`smallops alerts check` runs it once (for cron or a CI schedule); `smallops serve` runs it every
[alerts] interval. Any number of them may run at once: each alert changes once (engine.py) and
each message is sent once (outbox.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from smallops.alerts.engine import Changes, apply
from smallops.alerts.outbox import Attempt, Outbox

if TYPE_CHECKING:
    from smallops.config import Settings
    from smallops.storage.db import Engine
    from smallops.workflow import Workflow


@dataclass
class Round:
    """What one round did: the alerts' changes and the messages it tried to send."""

    changes: Changes
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def failed(self) -> list[Attempt]:
        return [a for a in self.attempts if a.outcome == "failed"]

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.changes.as_dict(),
            "sent": [vars(a) for a in self.attempts],
        }


def check_once(
    engine: Engine,
    workflows: Mapping[str, Workflow[Any]],
    settings: Settings,
    env: Mapping[str, str],
    *,
    now: datetime | None = None,
    send: bool = True,
) -> Round:
    """Evaluate every rule at `now`, apply what they found, and (with `send`) send what is due."""
    from smallops.alerts.rules import Context, evaluate

    now = now or datetime.now(timezone.utc)
    context = Context(
        engine=engine,
        workflows=workflows,
        settings=settings.alerts,
        spool_dir=settings.spool_dir,
        now=now,
    )
    owners = {name: wf.owner for name, wf in workflows.items()}
    changes = apply(engine, evaluate(context), settings.alerts, owners, now)
    attempts = Outbox(engine, settings.alerts, env).send_due(now) if send else []
    return Round(changes, attempts)
