"""The quarantine: records the database refused, and torn spool tails, set aside with a reason.

A refused record must never block the records behind it, and must never vanish: it is kept
here, one JSON line per record (its rows as they would have been written, secrets already
removed, with its prompt parts put back inline so it reads whole on its own), with why it was
refused. `smallops status` counts the entries and
`smallops show` finds a run that is here rather than in the log.

One folder per database (beside its spool); each process appends to a file of its own.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic_core import from_json, to_json

from smallops.ids import short_id, uuid7
from smallops.storage.prompt_parts import inline_row, parts_of
from smallops.storage.schema import RUN_COLUMNS
from smallops.storage.store import RowBatch


@dataclass(frozen=True)
class Entry:
    """One thing set aside: a run (with its review item), a prompt version or spool bytes."""

    kind: str  # "run", "prompt" or "spool_bytes"
    at: float
    reason: str
    run_id: str | None
    workflow: str | None
    path: Path
    data: dict[str, Any]

    def run(self) -> dict[str, Any] | None:
        """The refused run as a dict of its columns (JSON columns still as text)."""
        row = self.data.get("run")
        return dict(zip(RUN_COLUMNS, row, strict=False)) if row else None


class Quarantine:
    """Append-only quarantine files for one database."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file: IO[bytes] | None = None

    def add(self, batch: RowBatch, reason: str) -> None:
        """Keep the rows of `batch` (a refused unit), durably, with the reason."""
        now = time.time()
        lines = [
            {"kind": "prompt", "at": now, "reason": reason, "prompt": row} for row in batch.prompts
        ]
        reviews = {row[0]: row for row in batch.reviews}
        for run in batch.runs:
            lines.append(
                {
                    "kind": "run",
                    "at": now,
                    "reason": reason,
                    "run_id": run[0],
                    "workflow": run[1],
                    "run": inline_row(run, parts_of(run, batch.parts)),
                    "review": reviews.get(run[0]),
                }
            )
        self._append(lines)

    def add_bytes(self, data: bytes, source: Path, reason: str) -> None:
        """Keep bytes that cannot be read back as rows (a torn or damaged spool frame)."""
        self._append(
            [
                {
                    "kind": "spool_bytes",
                    "at": time.time(),
                    "reason": reason,
                    "source": str(source),
                    "bytes": base64.b64encode(data).decode(),
                }
            ]
        )

    def entries(self) -> Iterator[Entry]:
        """Everything set aside for this database, oldest file first, each thing once (a spool
        replay that stopped half-way and ran again sets the same rows aside again)."""
        if not self.folder.is_dir():
            return
        seen: set[tuple[str, str]] = set()
        for path in sorted(self.folder.glob("*.jsonl")):
            for line in path.read_bytes().splitlines():
                try:
                    data = from_json(line)
                except ValueError:
                    continue  # a line cut short by a crash mid-write
                key = (str(data.get("kind")), str(data.get("run_id") or data.get("bytes")))
                if key in seen:
                    continue
                seen.add(key)
                yield Entry(
                    kind=data.get("kind", "run"),
                    at=float(data.get("at", 0)),
                    reason=str(data.get("reason", "")),
                    run_id=data.get("run_id"),
                    workflow=data.get("workflow"),
                    path=path,
                    data=data,
                )

    def find(self, run_id: str) -> Entry | None:
        """The entry of a run whose id (or short id) is, or starts or ends with, `run_id`."""
        wanted = run_id.strip().lower()
        for entry in self.entries():
            found = entry.run_id or ""
            if (
                found
                and wanted
                and (
                    found.startswith(wanted)
                    or found.endswith(wanted)
                    or short_id(found).startswith(wanted)
                )
            ):
                return entry
        return None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _append(self, lines: list[dict[str, Any]]) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = (self.folder / f"{uuid7()}-{os.getpid()}.jsonl").open("ab")
        self._file.write(b"".join(to_json(line, fallback=str) + b"\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())


def quarantine_folder(spool_folder: Path) -> Path:
    """Beside the spool, named like it (one folder per database)."""
    return spool_folder.parent.parent / "quarantine" / spool_folder.name
