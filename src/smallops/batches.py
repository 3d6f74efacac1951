"""Which batch a call belongs to: `smallops run --input FILE` marks each call with its file's
batch id and the input's line and hash, so an interrupted batch can be resumed (`--resume`)
without running any input twice.

A context variable, so each asyncio task (and thread) carries its own mark and the Workflow
API stays as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from smallops.ids import uuid7

#: (batch id, "<line>:<input hash>") of the call being made, or None outside a batch.
current: ContextVar[tuple[str, str] | None] = ContextVar("smallops_batch", default=None)


def file_key(workflow: str, source: Path) -> str:
    """The part of a batch id that names what ran: the workflow and the input file."""
    named = f"{workflow}|{source.resolve()}"
    return hashlib.sha256(named.encode()).hexdigest()[:16]


def new_batch_id(workflow: str, source: Path) -> str:
    """`<file key>/<time-ordered id>`: the latest batch of a file sorts last."""
    return f"{file_key(workflow, source)}/{uuid7()}"


def item(line: int, inputs: dict[str, Any]) -> str:
    """An input's mark within its batch: its line number and a hash of its content."""
    text = json.dumps(inputs, sort_keys=True, ensure_ascii=True, default=str)
    return f"{line}:{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


@contextlib.contextmanager
def marked(batch_id: str, mark: str) -> Iterator[None]:
    """Calls made inside carry this batch id and item mark."""
    token = current.set((batch_id, mark))
    try:
        yield
    finally:
        current.reset(token)
