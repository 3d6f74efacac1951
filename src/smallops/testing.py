"""Helpers for testing code that uses smallops: a fake model and a look at what was recorded.

from smallops.testing import FakeProvider, recorded_runs

triage = email_triage.replace(model="fake:rules", provider=FakeProvider(my_rules))
result = triage.run(subject="Invoice", body="...")
assert recorded_runs(triage)[-1]["status"] == "pending_review"

Call `reset()` between tests (e.g. in an autouse fixture) so that no writer, connection, rate
limit or breaker state carries over from one test to the next.
"""

from __future__ import annotations

from typing import Any

from smallops.providers.fake import FakeProvider, FakeReply, FakeRequest, example_answer
from smallops.resilience import breaker as _breaker
from smallops.resilience import ratelimit as _ratelimit
from smallops.secrets.cache import cache as _secrets
from smallops.storage import writer as _writer
from smallops.storage.db import dispose_engines, ensure_schema, log_database
from smallops.storage.queries import runs_of
from smallops.workflow import Workflow

__all__ = ["FakeProvider", "FakeReply", "FakeRequest", "example_answer", "recorded_runs", "reset"]


def reset() -> None:
    """Forget this process's smallops state, as between two tests: drain and drop the log
    writers, close the database connections, clear the in-memory rate limits and circuit
    breakers, and forget the keys fetched from secret stores. State shared through Redis or the
    database is left alone."""
    _writer.reset()
    dispose_engines()
    _ratelimit.reset_memory()
    _breaker.reset_memory()
    _secrets.reset()


def recorded_runs(workflow: Workflow[Any]) -> list[dict[str, Any]]:
    """Every run of `workflow` in its log, oldest first, after waiting for the writer."""
    settings = workflow.settings
    _writer.writer_for(settings.log).flush()
    _, engine = log_database(settings.log)
    ensure_schema(engine)
    return runs_of(engine, workflow.name)
