"""Humans in the loop: review policies, the queue, decisions, graduation to auto-action.

The desk is what an application builds its own review screen on, as `smallops serve` does:

    from smallops.project import Project
    from smallops.review import ReviewDesk

    project = Project.find()
    desk = ReviewDesk(project.engine(), project.workflows)
    item = desk.claim_next("ann")          # None when nothing waits
    if item is not None:
        desk.approve(item["run_id"], "ann")  # or correct(..., output) / reject(..., reason)
"""

from smallops.review.desk import ReviewDesk
from smallops.review.export import Exported, export_reviewed
from smallops.review.policy import ReviewPolicy, sample, until_graduated
from smallops.review.queue import Decision, ReviewQueue

__all__ = [
    "Decision",
    "Exported",
    "ReviewDesk",
    "ReviewPolicy",
    "ReviewQueue",
    "export_reviewed",
    "sample",
    "until_graduated",
]
