"""A workflow's review figures: the backlog and its oldest item's age, and what reviewers did.

Approval and correction rates are over the items decided (approved, corrected or rejected);
a skip leaves the item waiting, so it is counted apart and in neither rate.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from smallops.review.triage import age_text
from smallops.storage.dashboard_figures import Backlog


def backlog_figures(found: Backlog | None, now: datetime) -> dict[str, Any]:
    if found is None or found.pending == 0:
        return {"pending": 0, "oldest": None, "oldest_age_s": None, "oldest_age": None}
    age = int((now - found.oldest).total_seconds()) if found.oldest is not None else None
    return {
        "pending": found.pending,
        "oldest": found.oldest,
        "oldest_age_s": age,
        "oldest_age": age_text(age) if age is not None else None,
    }


def decision_figures(actions: Counter[str] | None) -> dict[str, Any]:
    actions = actions or Counter()
    decided = actions["approve"] + actions["correct"] + actions["reject"]
    return {
        "decided": decided,
        "approved": actions["approve"],
        "corrected": actions["correct"],
        "rejected": actions["reject"],
        "skipped": actions["skip"],
        "approval_rate": round(actions["approve"] / decided, 4) if decided else None,
        "correction_rate": round(actions["correct"] / decided, 4) if decided else None,
    }
