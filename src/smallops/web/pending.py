"""The queue page's pending counts: read at most once every FRESH seconds, exact for a queue
that fits on the page.

Every reviewer reloads the queue page, and counting the pending items (20,000 on a busy desk)
was most of its database work, done again for every load under the load the decisions bring. A
count a second or two old changes nothing a reviewer does, so this server keeps the last one for
FRESH seconds. A queue short enough to show whole is counted from the page itself, so a small
team's desk (and a reviewer who has just decided the last item) always sees the exact number.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

FRESH = 2.0  # seconds a count is shown before it is read again


class PendingCounts:
    """The last pending counts per workflow this server read, while they are fresh."""

    def __init__(self, fresh: float = FRESH) -> None:
        self.fresh = fresh
        self._lock = threading.Lock()
        self._counts: dict[str, int] | None = None
        self._read_at = 0.0

    def recent(self) -> dict[str, int] | None:
        """A copy of the counts if they are fresh, else None: read them and `keep` them."""
        with self._lock:
            counts = self._counts
            if counts is None or time.monotonic() - self._read_at >= self.fresh:
                return None
            return dict(counts)

    def keep(self, counts: Mapping[str, int], read_at: float) -> None:
        """Keep counts read at `read_at` (time.monotonic, taken before the read began)."""
        with self._lock:
            if self._counts is None or read_at >= self._read_at:
                self._counts, self._read_at = dict(counts), read_at


def counted_from_page(
    counts: Mapping[str, int], items: Sequence[Mapping[str, Any]], workflow: str | None
) -> dict[str, int]:
    """`counts` with those of the workflows a page shows whole (every pending item of them, or
    of all when `workflow` is None) taken from the page: exact, however old `counts` is."""
    shown = Counter(str(item["workflow"]) for item in items)
    exact = {name: n for name, n in counts.items() if workflow is not None and name != workflow}
    exact.update(shown)
    return exact
