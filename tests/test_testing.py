"""smallops.testing: what users' own tests lean on, the fake model, the recorded runs, reset()."""

from __future__ import annotations

from smallops import FakeProvider, Settings, Workflow
from smallops.resilience.breaker import breaker_store
from smallops.storage import writer as writer_module
from smallops.testing import recorded_runs, reset

from models import GOOD, Triage


def test_reset_drains_the_writers_and_forgets_in_memory_state(tmp_path, database_url):
    (tmp_path / "p.prompt").write_text("[user]\n{{ body }}")
    wf = Workflow(
        "triage",
        model="fake:rules",
        prompt="p.prompt",
        output=Triage,
        fallback="raise",
        review="none",
        provider=FakeProvider(lambda _: GOOD),
        settings=Settings(root=tmp_path, database_url=database_url),
        base_dir=tmp_path,
    )
    wf.run(body="Where is my invoice?")
    breakers = breaker_store(None)
    reset()
    assert writer_module._writers == {}
    assert breaker_store(None) is not breakers  # a fresh in-memory breaker store
    [run] = recorded_runs(wf)  # drained before it was dropped: nothing lost
    assert run["status"] == "auto"
