"""The spool: rows kept in local files while the database is unreachable, replayed when it returns.

One folder per database; each process appends to its own file and holds an exclusive lock on it
while it is open, so a replaying process takes only files nobody is writing (including those of
processes that died). A file is deleted only after all its rows are committed (or set aside).

Each batch is one line, a frame: `S2 <crc32 of the payload> <payload>`, the payload a JSON
object of the batch's run, review, prompt version and prompt part rows (a frame from before
prompt parts has none, and its runs hold everything inline). A batch is in the spool whole or
not at all: a write that fails half-way (a full disk) is cut back off the file, and a frame
that a crash left torn, or that does not match its checksum, is set aside in the quarantine at
replay instead of being half-applied. Files from before frames (one `["r", row]` per line)
still replay.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic_core import from_json, to_json

from smallops.ids import uuid7
from smallops.storage.schema import RUN_COLUMNS
from smallops.storage.store import RowBatch, merge

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: only a process's own files are replayed
    fcntl = None  # type: ignore[assignment]

MAGIC = b"S2 "
REPLAY_CHUNK = 5000  # runs per transaction when replaying


def spool_folder(spool_dir: Path, database_url: str) -> Path:
    """The folder for one database (so rows never replay into another one)."""
    return spool_dir / hashlib.sha256(database_url.encode()).hexdigest()[:16]


def frame(batch: RowBatch) -> bytes:
    """One batch as one checksummed line."""
    rows = {"r": batch.runs, "q": batch.reviews, "p": batch.prompts, "t": batch.parts}
    payload = to_json(rows, fallback=str)
    return MAGIC + b"%08x " % zlib.crc32(payload) + payload + b"\n"


class Spool:
    """Append-only spool files for one database."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None
        self._path: Path | None = None

    def append(self, batch: RowBatch) -> None:
        """Write a batch durably (fsynced), or not at all: OSError if it could not be kept."""
        data = frame(batch)
        fd = self._open()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            self._take_back(fd, start)
            raise

    def close(self) -> None:
        """Close (and unlock) this process's file so that it can be replayed."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            self._path = None

    def forget(self) -> None:
        """After a fork: leave the parent's file (and its lock) to the parent."""
        self._fd = None
        self._path = None

    def pending(self) -> list[Path]:
        """Spool files waiting to be replayed, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.jsonl") if p != self._path)

    def waiting(self) -> int:
        """How many runs the spool holds (every file, this process's own included)."""
        total = 0
        if not self.folder.is_dir():
            return 0
        for path in self.folder.glob("*.jsonl"):
            with contextlib.suppress(OSError), path.open("rb") as handle:
                for line in handle:
                    batch, _ = _read(line)
                    total += len(batch.runs) if batch is not None else 0
        return total

    def replay(
        self,
        land: Callable[[RowBatch], int],
        set_aside: Callable[[bytes, Path, str], None] | None = None,
    ) -> int:
        """Replay every unlocked file through `land` (which raises to stop: the file stays);
        returns the runs landed. Damaged frames go to `set_aside(bytes, file, reason)`."""
        total = 0
        for path in self.pending():
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                continue  # another process replayed it first
            with handle:
                if not _try_lock(handle) or not path.exists():
                    continue  # its writer is alive, or another process is replaying it
                for batch in _batches(handle, path, set_aside):
                    total += land(batch)
                path.unlink()
        return total

    def _open(self) -> int:
        if self._fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._path = self.folder / f"{uuid7()}-{os.getpid()}.jsonl"
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if fcntl is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd = fd
        return self._fd

    def _take_back(self, fd: int, size: int) -> None:
        """Cut a half-written frame off the file; if even that fails, leave the file (replay
        sets its torn tail aside) and start a new one for the next batch."""
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            self.close()


def _try_lock(handle: IO[bytes]) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _batches(
    handle: IO[bytes], path: Path, set_aside: Callable[[bytes, Path, str], None] | None
) -> Iterator[RowBatch]:
    """The file's batches, merged up to REPLAY_CHUNK runs; damaged frames are set aside."""
    pending: list[RowBatch] = []
    runs = 0
    for line in handle:
        batch, problem = _read(line)
        if problem is not None:
            if set_aside is not None:
                set_aside(line, path, problem)
            continue
        if batch is None:
            continue
        pending.append(batch)
        runs += len(batch.runs)
        if runs >= REPLAY_CHUNK:
            yield merge(pending)
            pending, runs = [], 0
    if pending:
        yield merge(pending)


def _read(line: bytes) -> tuple[RowBatch | None, str | None]:
    """A line as a batch, nothing (a blank line), or why it cannot be read."""
    if not line.endswith(b"\n"):
        return None, "a torn spool frame: the process stopped while writing it"
    if line.startswith(MAGIC):
        crc, _, payload = line[len(MAGIC) :].rstrip(b"\n").partition(b" ")
        try:
            if int(crc, 16) != zlib.crc32(payload):
                return None, "a damaged spool frame: its checksum does not match"
            data: dict[str, Any] = from_json(payload)
        except ValueError:
            return None, "a damaged spool frame: not readable"
        runs: list[Any] = [_padded(r) for r in data["r"]]
        return RowBatch(runs, data["q"], data["p"], data.get("t", [])), None
    if not line.strip():
        return None, None
    return _legacy(line)


def _legacy(line: bytes) -> tuple[RowBatch | None, str | None]:
    """A line of a spool written before frames: `["r" | "p" | "q", row]`."""
    try:
        kind, row = from_json(line)
    except ValueError:
        return None, "a damaged spool line"
    if kind == "r":
        return RowBatch(runs=[_padded(row)]), None
    return (RowBatch(reviews=[row]) if kind == "q" else RowBatch(prompts=[row])), None


def _padded(row: list[Any]) -> list[Any]:
    """A run row spooled before a column was added gets NULL in the new columns."""
    if len(row) < len(RUN_COLUMNS):
        return [*row, *[None] * (len(RUN_COLUMNS) - len(row))]
    return row
