"""Graduation: from reviewing every output to auto-actioning the kinds proven reliable.

An output class is one value of one enum or Literal field (`category=spam`). Its evidence is the
reviews of outputs in that class made with the workflow's current prompt version and pinned model:
approvals without edits count for it, corrections and rejections against it. A class graduates
when it has `min_days` of reviews and the one-sided 95% Clopper-Pearson lower bound of its
approval rate reaches the target; a new prompt version, a different served model or a failed
audit demotes it. Every promotion and demotion is a row in `graduation_events`.

The request path asks `Graduation.graduated(...)`, which reads memory only; a background refresh
keeps that memory in step with the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, select

from smallops.ids import uuid7
from smallops.review.policy import ReviewPolicy
from smallops.review.stats import clopper_pearson_lower, reviews_needed
from smallops.storage.schema import graduation_events, review_decisions, review_items

log = logging.getLogger("smallops")
REFRESH_EVERY = 30.0  # seconds
FINAL_ACTIONS = ("approve", "correct", "reject")


def class_fields(output: type[BaseModel] | None) -> dict[str, list[Any]]:
    """The top-level enum and Literal fields of an output model, with their values."""
    if output is None:
        return {}
    return enum_fields(output.model_json_schema())


def enum_fields(schema: dict[str, Any]) -> dict[str, list[Any]]:
    """The top-level enum fields of a JSON schema (as stored with each prompt version)."""
    defs = schema.get("$defs", {})
    fields = {}
    for name, prop in schema.get("properties", {}).items():
        for option in [prop, *prop.get("anyOf", [])]:
            if "$ref" in option:
                option = defs.get(option["$ref"].rsplit("/", 1)[-1], {})
            if "enum" in option:
                fields[name] = list(option["enum"])
                break
            if "const" in option:
                fields[name] = [option["const"]]
                break
    return fields


def classes_of(output: Any, fields: dict[str, list[Any]]) -> list[str]:
    """`field=value` for each class field of an output (a model or a dict)."""
    if output is None or not fields:
        return []
    classes = []
    for name in fields:
        value = output.get(name) if isinstance(output, dict) else getattr(output, name, None)
        if value is not None:
            classes.append(f"{name}={getattr(value, 'value', value)}")
    return classes


@dataclass(frozen=True)
class ClassStats:
    """The evidence for one output class, and what it says."""

    workflow: str
    class_key: str
    reviews: int
    approvals: int
    rate: float | None
    lower_bound: float
    days: float
    graduated: bool
    recommendation: str


def class_stats(
    engine: Engine,
    workflow: str,
    policy: ReviewPolicy,
    *,
    prompt_version: str | None = None,
    model: str | None = None,
    fields: dict[str, list[Any]] | None = None,
    now: datetime | None = None,
) -> list[ClassStats]:
    """Per class: reviews, approvals without edits, the lower bound, days, a recommendation."""
    query = (
        select(review_decisions.c.action, review_decisions.c.decided_at, review_items.c.classes)
        .join(review_items, review_items.c.run_id == review_decisions.c.run_id)
        .where(review_decisions.c.workflow == workflow)
        .where(review_decisions.c.action.in_(FINAL_ACTIONS))
        .where(review_items.c.reason == "policy")
    )
    if prompt_version:
        query = query.where(review_items.c.prompt_version == prompt_version)
    if model:
        query = query.where(review_items.c.model_served == model)
    evidence: dict[str, list[tuple[bool, datetime]]] = defaultdict(list)
    with engine.connect() as connection:
        for action, decided_at, classes in connection.execute(query):
            for key in classes or []:
                evidence[key].append((action == "approve", _aware(decided_at)))
    for name, values in (fields or {}).items():
        for value in values:
            evidence.setdefault(f"{name}={value}", [])
    current = now or datetime.now(timezone.utc)
    promoted = current_promotions(engine, workflow)
    return [
        _summarise(workflow, key, rows, policy, current, key in promoted)
        for key, rows in sorted(evidence.items())
    ]


def _summarise(
    workflow: str,
    key: str,
    rows: list[tuple[bool, datetime]],
    policy: ReviewPolicy,
    now: datetime,
    graduated: bool,
) -> ClassStats:
    reviews = len(rows)
    approvals = sum(1 for approved, _ in rows if approved)
    bound = clopper_pearson_lower(approvals, reviews)
    days = (now - min(at for _, at in rows)).total_seconds() / 86400 if rows else 0.0
    if policy.kind == "always":
        advice = "keep reviewing: customer-facing (review='always')"
    elif bound >= policy.target and days >= policy.min_days:
        advice = "automate"
    elif bound >= policy.target:
        advice = f"needs about {policy.min_days - int(days)} more days of reviews"
    else:
        more = reviews_needed(approvals, reviews, policy.target)
        advice = (
            "keep reviewing: the approval rate is below the target"
            if more is None
            else f"needs about {more} more reviews"
        )
    return ClassStats(
        workflow=workflow,
        class_key=key,
        reviews=reviews,
        approvals=approvals,
        rate=approvals / reviews if reviews else None,
        lower_bound=round(bound, 4),
        days=round(days, 1),
        graduated=graduated,
        recommendation=advice,
    )


def current_promotions(engine: Engine, workflow: str) -> dict[str, dict[str, Any]]:
    """Classes whose latest graduation event is a promotion, with that event."""
    query = (
        select(graduation_events)
        .where(graduation_events.c.workflow == workflow)
        .order_by(graduation_events.c.at, graduation_events.c.id)
    )
    latest: dict[str, dict[str, Any]] = {}
    with engine.connect() as connection:
        for row in connection.execute(query):
            latest[row.class_key] = dict(row._mapping)
    return {key: event for key, event in latest.items() if event["action"] == "promote"}


def graduation_history(engine: Engine, workflow: str) -> list[dict[str, Any]]:
    """Every promotion and demotion of a workflow's classes, oldest first."""
    query = (
        select(graduation_events)
        .where(graduation_events.c.workflow == workflow)
        .order_by(graduation_events.c.at, graduation_events.c.id)
    )
    with engine.connect() as connection:
        return [{**row._mapping, "at": _aware(row.at)} for row in connection.execute(query)]


def event_row(
    workflow: str,
    class_key: str,
    action: str,
    reason: str,
    prompt_version: str,
    model: str | None,
    reviews: int = 0,
    lower_bound: float | None = None,
) -> dict[str, Any]:
    return {
        "id": uuid7(),
        "workflow": workflow,
        "class_key": class_key,
        "action": action,
        "reason": reason,
        "prompt_version": prompt_version,
        "model": model,
        "reviews": reviews,
        "lower_bound": lower_bound,
        "at": datetime.now(timezone.utc),
    }


class Graduation:
    """One workflow's graduated classes, in memory, refreshed in the background."""

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
        self.model = model
        self.fields = fields
        self.serving = model  # the model the provider answers with, as last seen
        self._promoted: dict[str, str | None] = {}  # class -> model it was promoted on
        self._loaded_at = -REFRESH_EVERY
        self._lock = threading.Lock()
        self._refreshing = False

    def graduated(self, classes: list[str], served_model: str | None) -> bool:
        """True when every class is promoted for this prompt version and this served model."""
        if served_model is not None and served_model != self.serving:
            self.serving = served_model  # evidence from the old model no longer applies
            self._refresh_soon()
        else:
            self._maybe_refresh()
        promoted = self._promoted
        return all(promoted.get(key, "") == self.serving for key in classes)

    def refresh(self) -> None:
        """Promote and demote from the evidence in the database, then reload the promotions."""
        engine = self._engine_factory()
        serving = self.serving
        promotions = current_promotions(engine, self.workflow)
        events = []
        for key, event in promotions.items():
            if event["prompt_version"] != self.prompt_version:
                old = event["prompt_version"]
                why = f"prompt version changed from {old} to {self.prompt_version}"
            elif event["model"] != serving:
                why = f"served model changed from {event['model']} to {serving}"
            else:
                continue
            events.append(
                event_row(self.workflow, key, "demote", why, self.prompt_version, serving)
            )
        demoted = {event["class_key"] for event in events}
        stats = class_stats(
            engine,
            self.workflow,
            self.policy,
            prompt_version=self.prompt_version,
            model=serving,
            fields=self.fields,
        )
        for row in stats:
            if row.recommendation == "automate" and (
                row.class_key not in promotions or row.class_key in demoted
            ):
                events.append(
                    event_row(
                        self.workflow,
                        row.class_key,
                        "promote",
                        f"{row.approvals}/{row.reviews} approved without edits over {row.days:g} "
                        f"days: lower bound {row.lower_bound:.4f} >= target {self.policy.target:g}",
                        self.prompt_version,
                        serving,
                        row.reviews,
                        row.lower_bound,
                    )
                )
        if events:
            with engine.begin() as connection:
                connection.execute(graduation_events.insert(), events)
        fresh = current_promotions(engine, self.workflow)
        self._promoted = {
            key: event["model"]
            for key, event in fresh.items()
            if event["prompt_version"] == self.prompt_version
        }
        self._loaded_at = time.monotonic()

    def forget(self, classes: list[str]) -> None:
        """Drop classes at once (a failed audit in this process); the event is already written."""
        self._promoted = {k: v for k, v in self._promoted.items() if k not in classes}

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


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
