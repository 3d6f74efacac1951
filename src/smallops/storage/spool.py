"""The spool: rows kept in local files while the database is unreachable, replayed when it returns.

One folder per database; each process appends to its own file and holds an exclusive lock on it
while it is open, so a replaying process takes only files nobody is writing (including those of
processes that died). A file is deleted only after all its rows are committed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from pydantic_core import from_json, to_json

from smallops.ids import uuid7
from smallops.storage.schema import RUN_COLUMNS

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: only a process's own files are replayed
    fcntl = None  # type: ignore[assignment]

Row = Sequence[Any]
REPLAY_CHUNK = 5000


def spool_folder(spool_dir: Path, database_url: str) -> Path:
    """The folder for one database (so rows never replay into another one)."""
    return spool_dir / hashlib.sha256(database_url.encode()).hexdigest()[:16]


class Spool:
    """Append-only spool files for one database."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file: IO[bytes] | None = None
        self._path: Path | None = None

    def append(
        self, runs: Sequence[Row], prompts: Sequence[Row], reviews: Sequence[Row] = ()
    ) -> None:
        """Write rows durably (flushed and fsynced) to this process's spool file."""
        handle = self._open()
        lines = [to_json(["p", row]) for row in prompts] + [to_json(["r", row]) for row in runs]
        lines += [to_json(["q", row]) for row in reviews]
        handle.write(b"\n".join(lines) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())

    def close(self) -> None:
        """Close (and unlock) this process's file so that it can be replayed."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._path = None

    def forget(self) -> None:
        """After a fork: leave the parent's file (and its lock) to the parent."""
        self._file = None
        self._path = None

    def pending(self) -> list[Path]:
        """Spool files waiting to be replayed, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.jsonl") if p != self._path)

    def replay(self, write: Any) -> int:
        """Replay every unlocked file through `write(runs, prompts, reviews)`; returns runs."""
        total = 0
        for path in self.pending():
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                continue  # another process replayed it first
            with handle:
                if not _try_lock(handle):
                    continue  # its writer is alive, or another process is replaying it
                if not path.exists():
                    continue
                for runs, prompts, reviews in _chunks(handle):
                    write(runs, prompts, reviews)
                    total += len(runs)
                path.unlink()
        return total

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._path = self.folder / f"{uuid7()}-{os.getpid()}.jsonl"
            self._file = self._path.open("ab")
            _try_lock(self._file)
        return self._file


def _try_lock(handle: IO[bytes]) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _chunks(handle: IO[bytes]) -> Iterator[tuple[list[Row], list[Row], list[Row]]]:
    rows: dict[str, list[Row]] = {"r": [], "p": [], "q": []}
    for line in handle:
        if not line.strip():
            continue
        try:
            kind, row = from_json(line)
        except ValueError:
            continue  # a line cut short by a crash mid-write: its batch was never acknowledged
        if kind == "r" and len(row) < len(RUN_COLUMNS):  # spooled before a column was added
            row = [*row, *[None] * (len(RUN_COLUMNS) - len(row))]
        rows[kind].append(row)
        if len(rows["r"]) >= REPLAY_CHUNK:
            yield rows["r"], rows["p"], rows["q"]
            rows = {"r": [], "p": [], "q": []}
    if any(rows.values()):
        yield rows["r"], rows["p"], rows["q"]
