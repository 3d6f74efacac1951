"""The pages' database work, bounded and honest about outages.

Every call a page makes goes through `Database.call` (or `.save` for a decision) in a worker
thread. An outage (down, stalled, locked) becomes `DatabaseDown`, which the app answers with a
503 and `Retry-After` in the page's format, and the outage is logged once, not per request. On
Postgres each call is bounded (`smallops.storage.watchdog`), so no request waits on a stalled
database for longer than that. While the database is known to be down, calls are answered at
once rather than each waiting out that bound: one call at a time, every RETRY_EVERY seconds, tries
it again, and the first that gets an answer marks it up. A failed decision says whether it was
saved: not, or not known when the database stopped answering during its commit.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio.to_thread

from smallops.errors import ConfigError, StorageError
from smallops.storage.health import CommitWatch, Health, first_line, unreachable
from smallops.storage.watchdog import bound_calls

if TYPE_CHECKING:
    from smallops.storage.db import Engine

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U")
RETRY_AFTER = 5  # seconds a client is asked to wait before trying again
RETRY_EVERY = 2.0  # seconds between tries of a database known to be down
#: Threads doing the pages' database work at once. Few on purpose: thirty requests each in a
#: thread of their own spend the GIL handing work to each other (bench/desk_load.py: about a
#: fifth more decisions per second with 8 than with 40, anyio's default); the rest wait their
#: turn without a thread. SMALLOPS_WEB_DB_THREADS sets another number.
THREADS = 8
THREADS_ENV = "SMALLOPS_WEB_DB_THREADS"


def thread_count() -> int:
    """THREADS, or the number SMALLOPS_WEB_DB_THREADS gives (1 to 64)."""
    given = os.environ.get(THREADS_ENV, "").strip()
    if not given:
        return THREADS
    if not given.isdigit() or not 1 <= int(given) <= 64:
        raise ConfigError(
            f"{THREADS_ENV}={given[:20]!r} is not a number of threads",
            hint=f"give a whole number from 1 to 64, or unset it for {THREADS}",
        )
    return int(given)


UNREACHABLE = "the database is unreachable"


class DatabaseDown(StorageError):
    """A page's database work failed because the database is unreachable or not answering.

    `fields` go into the JSON answer next to "error" and "hint" (a decision's "saved")."""

    headers = {"Retry-After": str(RETRY_AFTER)}

    def __init__(
        self,
        message: str = UNREACHABLE,
        *,
        hint: str = "try again in a moment",
        fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.fields = fields or {}


def not_saved(during_commit: bool) -> DatabaseDown:
    """A decision that failed with the database: not saved, or not known to be."""
    if during_commit:
        return DatabaseDown(
            "the database stopped answering while saving the decision: it may or may not "
            "have been saved",
            hint="open the item again in a moment to see whether it was decided",
            fields={"saved": None},
        )
    return DatabaseDown(
        f"{UNREACHABLE}: the decision was not saved",
        hint="try again in a moment",
        fields={"saved": False},
    )


class Database:
    """The desk's database as the pages use it: each call bounded, each outage reported once."""

    def __init__(self, engine: Engine, timeout: float | None) -> None:
        self.timeout = timeout
        self.watchdog = bound_calls(engine, timeout) if timeout else None
        label = engine.url.render_as_string(hide_password=True)
        self.health = Health(label, "review pages answer 503 until it answers again")
        self._retrying = threading.Lock()  # held by the one call trying a down database again
        self._next_try = 0.0  # when (time.monotonic) a down database may be tried again
        self.commits = CommitWatch(engine)
        self.threads = thread_count()
        self._threads: anyio.CapacityLimiter | None = None  # made in the server's event loop

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(...)` in a worker thread; DatabaseDown if the database is unreachable."""
        return await self._in_thread(functools.partial(fn, *args, **kwargs), False)

    async def save(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like `call`, for a decision: its DatabaseDown says whether it was saved."""
        return await self._in_thread(functools.partial(fn, *args, **kwargs), True)

    async def save_then(
        self, save: Callable[[], T], then: Callable[[], U]
    ) -> tuple[T, U | DatabaseDown]:
        """`save()` as `save` runs it, then `then()` as `call` runs it, in one trip to a worker
        thread (a decision and the claim of the next item). The save's failure raises; the
        second call's outage is returned in its place: the decision is saved all the same."""

        def both() -> tuple[T, U | DatabaseDown]:
            saved = self._attempt(save, True)
            try:
                return saved, self._attempt(then, False)
            except DatabaseDown as exc:
                return saved, exc

        return await self._run(both)

    async def _in_thread(self, work: Callable[[], T], saving: bool) -> T:
        return await self._run(functools.partial(self._attempt, work, saving))

    async def _run(self, work: Callable[[], T]) -> T:
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(work, limiter=self._threads)

    def failed(self, error: BaseException, cuts_before: int | None = None) -> None:
        """Note an outage (logged if it is news); the next try waits RETRY_EVERY seconds."""
        self._next_try = time.monotonic() + RETRY_EVERY
        cut = self.watchdog is not None and cuts_before not in (None, self.watchdog.cuts)
        self.health.failed(f"no answer within {self.timeout:g} s" if cut else first_line(error))

    def _attempt(self, work: Callable[[], T], saving: bool) -> T:
        retrying = self.health.down
        if retrying and not self._may_retry():
            raise not_saved(False) if saving else DatabaseDown()
        cuts = self.watchdog.cuts if self.watchdog else None
        self.commits.start()
        try:
            result = work()
        except Exception as exc:
            if not unreachable(exc):
                raise
            self.failed(exc, cuts)
            raise (not_saved(self.commits.reached) if saving else DatabaseDown()) from None
        finally:
            if retrying:
                self._next_try = time.monotonic() + RETRY_EVERY
                self._retrying.release()
        self.health.answered()
        return result

    def _may_retry(self) -> bool:
        """Whether this call is the one to try the down database again (then it holds
        `_retrying` until it is done): none is trying now, and the last try is long enough ago."""
        if not self._retrying.acquire(blocking=False):
            return False
        if time.monotonic() < self._next_try:
            self._retrying.release()
            return False
        return True
