"""CPU time the OpenTelemetry export costs per run, in the threads that do it.

Sequential `Workflow.run` calls against the nginx upstream (as bench/overhead.py), with the
export sending to a local OTLP/HTTP receiver in a process of its own. The CPU time of each export
step is read with `time.thread_time` in the thread that runs it (the log writer's hand-over,
span building, encoding, the HTTP requests), so a busy machine disturbs it less than wall time.
Compare two checkouts by running this with PYTHONPATH at each one's src.

Run: python bench/export_cpu.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENAI_API_KEY", "sk-bench-000000000000")

import overhead

from smallops.storage import otel_export
from smallops.storage import writer as writer_module


def timed(owner: Any, name: str, spent: dict[str, float], key: str) -> None:
    """Wrap owner.name so that its CPU time in the calling thread adds up under `key`."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[key] += time.thread_time() - began

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    calls = parser.parse_args().calls
    workflow = overhead.make_workflow(Path(tempfile.mkdtemp()), "export-cpu")
    spent = dict.fromkeys(("writer hand-over", "spans", "encoding", "http", "export all"), 0.0)
    with overhead.upstream(), overhead.otlp_receiver() as url:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
        export = otel_export.SpanExport()
        otel_export._export = export
        timed(export, "_ready", spent, "export all")  # each run's spans built and written
        timed(export, "_send", spent, "export all")  # a batch's request joined and sent
        timed(export, "_spans", spent, "spans")
        timed(export._sdk, "written", spent, "encoding")
        timed(export._sdk._client, "export", spent, "http")
        timed(writer_module.Writer, "_export", spent, "writer hand-over")
        for _ in range(calls):
            workflow.run(subject=overhead.SUBJECT, body=overhead.BODY)
        writer_module.flush_all()
        export.flush(60)
    print(f"{calls:,} runs, {export.sent:,} spans sent, {export.dropped:,} dropped")
    for key, seconds in spent.items():
        print(f"{key:18s} {seconds / calls * 1e6:8.1f} µs CPU per run")


if __name__ == "__main__":
    main()
