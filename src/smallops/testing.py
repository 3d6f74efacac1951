"""Helpers for testing code that uses smallops: a fake model and a look at what was recorded.

from smallops.testing import FakeProvider, recorded_runs

triage = email_triage.replace(model="fake:rules", provider=FakeProvider(my_rules))
result = triage.run(subject="Invoice", body="...")
assert recorded_runs(triage)[-1]["status"] == "pending_review"
"""

from __future__ import annotations

from typing import Any

from smallops.providers.fake import FakeProvider, FakeReply, FakeRequest, example_answer
from smallops.storage import writer as _writer
from smallops.storage.db import ensure_schema, log_database
from smallops.storage.queries import runs_of
from smallops.workflow import Workflow

__all__ = ["FakeProvider", "FakeReply", "FakeRequest", "example_answer", "recorded_runs"]


def recorded_runs(workflow: Workflow[Any]) -> list[dict[str, Any]]:
    """Every run of `workflow` in its log, oldest first, after waiting for the writer."""
    settings = workflow.settings
    _writer.writer_for(settings).flush()
    _, engine = log_database(settings)
    ensure_schema(engine)
    return runs_of(engine, workflow.name)
