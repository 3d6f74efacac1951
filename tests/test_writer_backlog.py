"""The log writer stops handing the GIL back while it is behind, so its queue cannot only grow.

Under a busy event loop (the gateway at full load) each yield costs a switch interval, which held
the writer below the request rate: its queue, every record in memory, grew with the load.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from smallops import FakeProvider, Settings, Workflow
from smallops.storage import writer as writer_module

from models import GOOD, Triage


def _records(tmp_path: Path, monkeypatch, count: int) -> tuple[writer_module.Writer, list]:
    """`count` real run records, taken before they reach the queue (no writing thread)."""
    captured: list = []
    monkeypatch.setattr(
        writer_module.Writer, "submit", lambda _self, record: captured.append(record)
    )
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    settings = Settings(root=tmp_path, database_url=f"sqlite:///{tmp_path / 'log.db'}")
    wf = Workflow(
        "writer-backlog",
        model="fake:rules",
        prompt="p.prompt",
        output=Triage,
        fallback="review",
        provider=FakeProvider(lambda _: GOOD),
        settings=settings,
        base_dir=tmp_path,
    )
    for i in range(count):
        wf.run(text=f"call {i}")
    assert len(captured) == count
    return writer_module.writer_for(settings.log), captured


def test_the_writer_yields_while_it_keeps_up_and_catches_up_when_behind(tmp_path, monkeypatch):
    writer, records = _records(tmp_path, monkeypatch, 20)
    caller = threading.current_thread()
    yields: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread() is caller:
            yields.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(writer_module, "YIELD_EVERY", -1.0)  # every record is past the budget
    monkeypatch.setattr(writer_module.time, "sleep", sleep)
    batch, refused = writer._encode(records)
    assert len(batch.runs) == 20 and not refused
    assert yields == [0] * 20  # keeping up: the GIL is handed back at every chance

    yields.clear()
    for _ in range(writer_module.CATCH_UP):
        writer._queue.put(records[0])
    try:
        batch, refused = writer._encode(records)
    finally:
        while not writer._queue.empty():
            writer._queue.get_nowait()
    assert len(batch.runs) == 20 and not refused
    assert yields == []  # CATCH_UP records queued behind: encode without yielding
