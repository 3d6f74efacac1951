"""The items this server's reviewers hold: one each, given back when they move on or the
server stops.

A claimed item is leased for 10 minutes; a reviewer who moved on, or whose server stopped
mid-review, would keep everyone else off it until then. So the server remembers what its
reviewers claimed and have not decided: claiming the next item gives back the one before, and
on shutdown it clears those leases — within a bound: if the database cannot be reached in time,
it says so in one line and exits, and the leases expire on their own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from smallops.review.desk import ReviewDesk
from smallops.review.queue import DEFAULT_LEASE
from smallops.storage.health import first_line

log = logging.getLogger("smallops")


class Leases:
    """Run id -> the reviewer of this server who claimed it and has not decided it."""

    def __init__(self) -> None:
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()

    def claimed(self, run_id: str, reviewer: str) -> dict[str, str]:
        """Note that `reviewer` claimed `run_id`. Returns what they held here before (run id ->
        reviewer), now forgotten: moving on gives it back."""
        with self._lock:
            before = {r: who for r, who in self._held.items() if who == reviewer and r != run_id}
            for run in before:
                del self._held[run]
            self._held[run_id] = reviewer
        return before

    def settled(self, run_id: str) -> None:
        """Decided or skipped: the lease is gone already."""
        with self._lock:
            self._held.pop(run_id, None)

    def held(self) -> dict[str, str]:
        with self._lock:
            return dict(self._held)


async def give_back(desk: ReviewDesk, leases: Leases, within: float) -> None:
    """Clear the leases still held, waiting at most `within` seconds for the database."""
    held = leases.held()
    if not held:
        return
    outcome: dict[str, Any] = {}

    def unclaim() -> None:
        try:
            outcome["count"] = desk.unclaim(held)
        except Exception as exc:
            outcome["error"] = exc

    # A daemon thread, so a database that never answers cannot hold up the exit.
    worker = threading.Thread(target=unclaim, daemon=True, name="smallops-give-back")
    worker.start()
    await asyncio.to_thread(worker.join, within)
    if "count" in outcome:
        for run_id in held:
            leases.settled(run_id)
        log.info("smallops: gave back %s to the queue", _items(outcome["count"]))
        return
    why = first_line(outcome["error"]) if "error" in outcome else f"no answer within {within:g} s"
    minutes = int(DEFAULT_LEASE.total_seconds() // 60)
    log.warning(
        "smallops: could not give back %s (%s); their leases expire on their own within %d minutes",
        _items(len(held)),
        why,
        minutes,
    )


def _items(count: int) -> str:
    return f"{count} claimed review item{'' if count == 1 else 's'}"
