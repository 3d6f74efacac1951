"""Time-ordered run ids (UUID version 7), made client-side so a call never waits on a database."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """A UUIDv7 string; ids made by one process sort in the order they were made."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _counter = ms, int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:  # same millisecond (or a clock step back): keep counting from the last id
            ms, _counter = _last_ms, _counter + 1
            if _counter > 0xFFF:
                _last_ms, _counter = _last_ms + 1, 0
                ms = _last_ms
    tail = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62) | tail
    return str(uuid.UUID(int=value))


#: How many characters of a run id are shown: its random tail, unique in practice, where the
#: start of an id is its creation time (shared by every id made in the same millisecond).
SHORT_ID = 12


def short_id(run_id: str) -> str:
    """The id as tables print it: the random tail. `show`, `review approve` and the others take
    it, any unique start of it (8+ characters), or any unique start of the whole id."""
    return run_id[-SHORT_ID:]


def uuid7_time(run_id: str) -> float:
    """The creation time (epoch seconds) encoded in a UUIDv7."""
    return (uuid.UUID(run_id).int >> 80) / 1000
