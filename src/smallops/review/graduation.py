"""Graduation: from reviewing every output to auto-actioning the kinds proven reliable.

An output class is one value of one enum or Literal field (`category=spam`). Its evidence is the
reviews of outputs in that class, per prompt version and served model (see `evidence`): a class
graduates for them when it has `min_days` of reviews and the one-sided 95% Clopper-Pearson lower
bound of its approval rate reaches the target. A new prompt version or a different served model
starts with its own evidence; a failed audit, or reviews that pull the bound below the target,
demote it, and only reviews after the demotion count toward promoting it again. Every promotion
and demotion is a row in `graduation_events`.

The request path asks `Graduation.graduated(...)`, which reads memory only; a background refresh
keeps that memory in step with the database.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from smallops.review.evidence import Key, changes, class_stats, record
from smallops.review.policy import ReviewPolicy

log = logging.getLogger("smallops")
REFRESH_EVERY = 30.0  # seconds


class Graduation:
    """One workflow's promoted keys for its prompt version, in memory, refreshed in the
    background. Each output is judged by the evidence of the model that served it."""

    def __init__(
        self,
        engine_factory: Any,
        workflow: str,
        policy: ReviewPolicy,
        prompt_version: str,
        model: str,
        fields: dict[str, list[Any]],
    ) -> None:
        self._engine_factory = engine_factory
        self.workflow = workflow
        self.policy = policy
        self.prompt_version = prompt_version
        self.model = model  # the pinned model: the key of outputs whose provider names none
        self.fields = fields
        self._promoted: frozenset[tuple[str, str]] = frozenset()  # (class, served model)
        self._loaded_at = -REFRESH_EVERY
        self._lock = threading.Lock()
        self._refreshing = False

    def graduated(self, classes: list[str], served_model: str | None) -> bool:
        """True when every class is promoted for this prompt version and the served model."""
        self._maybe_refresh()
        model = served_model or self.model
        promoted = self._promoted
        return all((key, model) in promoted for key in classes)

    def refresh(self) -> None:
        """Promote and demote by the evidence in the database, then reload the promotions."""
        engine = self._engine_factory()
        stats = class_stats(
            engine,
            self.workflow,
            self.policy,
            prompt_version=self.prompt_version,
            pinned=self.model,
            fields=self.fields,
        )
        standing = {row.key: row.standing for row in stats}
        decided = changes(stats, self.policy)
        if decided:
            standing = record(engine, self.workflow, self.prompt_version, self.model, decided)
        self._promoted = frozenset(
            (key.class_key, key.model) for key, now in standing.items() if now.promoted
        )
        self._loaded_at = time.monotonic()

    def forget(self, keys: list[Key]) -> None:
        """Drop keys at once (a failed audit in this process); the events are already written."""
        gone = {
            (key.class_key, key.model) for key in keys if key.prompt_version == self.prompt_version
        }
        self._promoted = self._promoted - gone

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._loaded_at >= REFRESH_EVERY:
            self._refresh_soon()

    def _refresh_soon(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
            self._loaded_at = time.monotonic()  # one refresh at a time, not one per call
        threading.Thread(
            target=self._refresh_quietly, daemon=True, name="smallops-graduation"
        ).start()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # the database may be down: keep reviewing, try again later
            log.warning("smallops: graduation refresh for %s failed: %s", self.workflow, exc)
        finally:
            self._refreshing = False
