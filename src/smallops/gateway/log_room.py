"""Holding new requests while the log writer catches up, so memory stays bounded under overload.

The gateway can answer faster than its process's log writer commits: against a fixed-response
upstream, a few thousand requests a second against one or two thousand runs written. Every
answered request is a run record held in memory until it is written, so a sustained surplus
grows memory without end. Past `BACKLOG_LIMIT` records waiting, a new request waits until the
writer is down to half of that: the gateway's sustained rate becomes its log's, and no run is
dropped. A writer that does not move at all (a stalled database) holds a request at most
`MAX_WAIT_SECONDS`: its own bounded writes turn the stall into spooling, and calls go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

BACKLOG_LIMIT = 1000  # run records waiting for the writer: half of one of its batches
MAX_WAIT_SECONDS = 1.0
POLL_SECONDS = 0.005  # how often the one watcher looks at the writer while requests wait


class LogRoom:
    """A gate in front of new requests, open while the log writer's backlog is under a limit.

    One watcher task polls the backlog while requests wait; the requests themselves await one
    shared future, so a queue of waiting clients costs no more than one."""

    def __init__(
        self,
        backlog: Callable[[], int],
        limit: int = BACKLOG_LIMIT,
        max_wait: float = MAX_WAIT_SECONDS,
    ) -> None:
        self._backlog = backlog
        self.limit = limit
        self.max_wait = max_wait
        self.waits = 0  # requests that were held: how often the log set the pace
        self._opened: asyncio.Future[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        """Return at once while there is room; else when the writer is down to half the limit,
        or after `max_wait`."""
        if self._backlog() <= self.limit:
            return
        self.waits += 1
        opened = self._opened
        if opened is None or opened.done():
            opened = self._opened = asyncio.get_running_loop().create_future()
            self._watcher = asyncio.create_task(self._watch(opened))
        with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
            await asyncio.wait_for(asyncio.shield(opened), self.max_wait)

    async def _watch(self, opened: asyncio.Future[None]) -> None:
        try:
            while self._backlog() > self.limit // 2:
                await asyncio.sleep(POLL_SECONDS)
        finally:
            if not opened.done():
                opened.set_result(None)
