"""The evidence for graduation, read the same way by routing and by `smallops review stats`.

Evidence is kept per key: an output class, a prompt version and the model that served the
outputs (the pinned model when the provider names none). Approvals without edits count for a key,
corrections and rejections against it. A key's standing is its latest graduation event: promoted
or not. A demotion, by a failed audit or by reviews that pull the bound below the target, starts
the key's evidence afresh: only reviews decided after it count, toward the bound and the days
alike, so the old evidence that once promoted the key cannot promote it again.

An event is written only when a key's standing changes, and only if the standing it was decided
from is still the standing when it is written.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from smallops.ids import uuid7
from smallops.pinning import parse_model
from smallops.review.policy import ReviewPolicy, until_graduated
from smallops.stats import clopper_pearson_lower, reviews_needed
from smallops.storage import graduation_log
from smallops.storage.db import write_transaction
from smallops.storage.graduation_log import lock_standings

if TYPE_CHECKING:
    from smallops.storage.db import Connection, Engine
    from smallops.workflow import Workflow


class Key(NamedTuple):
    """What one piece of evidence is about."""

    class_key: str
    prompt_version: str
    model: str


@dataclass(frozen=True)
class Standing:
    """A key's standing: promoted or not, and its latest demotion (older reviews do not count)."""

    promoted: bool = False
    since: datetime | None = None


@dataclass(frozen=True)
class ClassStats:
    """The evidence for one key, and what it says."""

    workflow: str
    class_key: str
    prompt_version: str
    model: str
    reviews: int
    approvals: int
    rate: float | None
    lower_bound: float
    target: float
    days: float
    graduated: bool
    since: datetime | None
    automate: bool
    recommendation: str

    @property
    def key(self) -> Key:
        return Key(self.class_key, self.prompt_version, self.model)

    @property
    def standing(self) -> Standing:
        return Standing(self.graduated, self.since)


def class_stats(
    engine: Engine,
    workflow: str,
    policy: ReviewPolicy,
    *,
    prompt_version: str,
    pinned: str,
    fields: dict[str, list[Any]] | None = None,
    served: str | None = None,
    now: datetime | None = None,
) -> list[ClassStats]:
    """Per key of a prompt version: the evidence since its latest demotion, and its standing.

    Every served model with reviews or a standing gets its rows; `served` (default: the pinned
    model) also gets a row for each value of each class field, reviewed or not.
    """
    with engine.connect() as connection:
        standing = standings(connection, workflow, pinned, prompt_version)
        demotions = sorted({s.since for s in standing.values() if s.since is not None})
        evidence = tallied_evidence(connection, workflow, pinned, prompt_version, demotions)
    current = now or datetime.now(timezone.utc)
    keys = set(evidence) | set(standing)
    for name, values in (fields or {}).items():
        keys |= {Key(f"{name}={value}", prompt_version, served or pinned) for value in values}
    summaries = []
    for key in sorted(keys, key=lambda key: (key.model, key.class_key)):
        held = standing.get(key, Standing())
        after = demotions.index(held.since) + 1 if held.since is not None else 0
        counted = [t for t in evidence.get(key, []) if t.epoch >= after]
        summaries.append(_summarise(workflow, key, counted, held, policy, current))
    return summaries


def tallied_evidence(
    connection: Connection,
    workflow: str,
    pinned: str,
    prompt_version: str,
    demotions: list[datetime],
) -> dict[Key, list[graduation_log.Tally]]:
    """Per key: the final decisions on policy reviews, counted in the database (approved or
    not, split at each of the demotion times) rather than read one by one."""
    evidence: dict[Key, list[graduation_log.Tally]] = defaultdict(list)
    for tally in graduation_log.policy_decision_tallies(
        connection, workflow, prompt_version, demotions
    ):
        for class_key in tally.classes:
            evidence[Key(class_key, prompt_version, tally.model_served or pinned)].append(tally)
    return evidence


def standings(
    connection: Connection, workflow: str, pinned: str, prompt_version: str
) -> dict[Key, Standing]:
    """Per key of a prompt version with graduation events: promoted or not, and its latest
    demotion."""
    found: dict[Key, Standing] = {}
    for event in graduation_log.graduation_events_of(connection, workflow, prompt_version):
        key = Key(event["class_key"], event["prompt_version"], event["model"] or pinned)
        if event["action"] == "promote":
            found[key] = Standing(True, found.get(key, Standing()).since)
        else:
            found[key] = Standing(False, event["at"])
    return found


def workflow_stats(engine: Engine, wf: Workflow[Any]) -> list[ClassStats]:
    """What `smallops review stats` shows for a workflow: the keys of its current prompt version,
    judged by its policy (by the default `until_graduated()` when it has none), with every class
    listed for the model that serves it now."""
    policy = wf.review if wf.review.kind in ("until_graduated", "always") else until_graduated()
    pinned, version = wf.model.model, wf.version.id
    return class_stats(
        engine,
        wf.name,
        policy,
        prompt_version=version,
        pinned=pinned,
        fields=wf.plan().class_fields,
        served=served_model(engine, wf.name, version, pinned),
    )


def earlier_versions(engine: Engine, workflow: str, prompt_version: str) -> dict[str, int]:
    """Reviews per earlier prompt version of a workflow (final decisions on policy reviews), the
    most recently reviewed first: they no longer count, but they show where graduation stood."""
    return graduation_log.reviews_per_earlier_version(engine, workflow, prompt_version)


def served_model(engine: Engine, workflow: str, prompt_version: str, pinned: str) -> str:
    """The model that served the latest production output routed by graduation, on this prompt
    version (the pinned model when there is none, or the provider named none)."""
    return graduation_log.latest_graduation_model(engine, workflow, prompt_version) or pinned


def changes(stats: list[ClassStats], policy: ReviewPolicy) -> list[tuple[ClassStats, str, str]]:
    """(stats, action, reason) for each key whose evidence calls for a different standing."""
    found = []
    for row in stats:
        since = f" since the demotion on {row.since:%Y-%m-%d %H:%M}" if row.since else ""
        evidence = f"{row.approvals}/{row.reviews} approved without edits{since}"
        if row.automate and not row.graduated:
            reason = (
                f"{evidence} over {row.days:g} days: lower bound {row.lower_bound:.4f} >= "
                f"target {policy.target:g}"
            )
            found.append((row, "promote", reason))
        elif row.graduated and not row.automate:
            if row.days < policy.min_days:
                reason = f"{evidence}: {row.days:g} days of reviews < min_days {policy.min_days}"
            else:
                reason = f"{evidence}: lower bound {row.lower_bound:.4f} < target {policy.target:g}"
            found.append((row, "demote", reason))
    return found


def record(
    engine: Engine,
    workflow: str,
    prompt_version: str,
    pinned: str,
    decided: list[tuple[ClassStats, str, str]],
) -> dict[Key, Standing]:
    """Write the events of `decided` whose key still stands as when decided; return the prompt
    version's standings afterwards."""
    with write_transaction(engine) as connection:
        lock_standings(connection)
        standing = standings(connection, workflow, pinned, prompt_version)
        events = [
            event_row(workflow, row.key, action, reason, row.reviews, row.lower_bound)
            for row, action, reason in decided
            if standing.get(row.key, Standing()) == row.standing
        ]
        if events:
            graduation_log.add_graduation_events(connection, events)
    for event in events:
        key = Key(event["class_key"], event["prompt_version"], event["model"])
        promoted = event["action"] == "promote"
        since = standing.get(key, Standing()).since
        standing[key] = Standing(True, since) if promoted else Standing(False, event["at"])
    return standing


def demote_for_audit(connection: Connection, item: dict[str, Any], reason: str) -> list[Key]:
    """In a failed audit's decision transaction: demote the keys of the audited output that are
    promoted (its classes, for its prompt version and served model); return them."""
    pin = graduation_log.pinned_model_of(connection, item["prompt_version"])
    pinned = parse_model(pin).model if pin else ""
    lock_standings(connection)
    standing = standings(connection, item["workflow"], pinned, item["prompt_version"])
    model = item["model_served"] or pinned
    keys = [Key(class_key, item["prompt_version"], model) for class_key in item["classes"]]
    demoted = [key for key in keys if standing.get(key, Standing()).promoted]
    if demoted:
        graduation_log.add_graduation_events(
            connection, [event_row(item["workflow"], key, "demote", reason) for key in demoted]
        )
    return demoted


def event_row(
    workflow: str,
    key: Key,
    action: str,
    reason: str,
    reviews: int = 0,
    lower_bound: float | None = None,
) -> dict[str, Any]:
    return {
        "id": uuid7(),
        "workflow": workflow,
        "class_key": key.class_key,
        "action": action,
        "reason": reason,
        "prompt_version": key.prompt_version,
        "model": key.model,
        "reviews": reviews,
        "lower_bound": lower_bound,
        "at": datetime.now(timezone.utc),
    }


def _summarise(
    workflow: str,
    key: Key,
    tallies: list[graduation_log.Tally],
    standing: Standing,
    policy: ReviewPolicy,
    now: datetime,
) -> ClassStats:
    """What the decisions since the key's latest demotion (`tallies`) say."""
    reviewed = sum(t.decisions for t in tallies)
    approvals = sum(t.decisions for t in tallies if t.approved)
    bound = clopper_pearson_lower(approvals, reviewed)
    days = (now - min(t.first for t in tallies)).total_seconds() / 86400 if tallies else 0.0
    automate = bound >= policy.target and days >= policy.min_days
    return ClassStats(
        workflow=workflow,
        class_key=key.class_key,
        prompt_version=key.prompt_version,
        model=key.model,
        reviews=reviewed,
        approvals=approvals,
        rate=approvals / reviewed if reviewed else None,
        lower_bound=round(bound, 4),
        target=policy.target,
        days=round(days, 1),
        graduated=standing.promoted,
        since=standing.since,
        automate=automate,
        recommendation=_advice(policy, approvals, reviewed, bound, days, automate),
    )


def _advice(
    policy: ReviewPolicy, approvals: int, reviewed: int, bound: float, days: float, automate: bool
) -> str:
    if policy.kind == "always":
        return "keep reviewing: customer-facing (review='always')"
    if automate:
        return "automate"
    if bound >= policy.target:
        return f"needs about {policy.min_days - int(days)} more days of reviews"
    more = reviews_needed(approvals, reviewed, policy.target)
    if more is not None:
        share = "all" if approvals == reviewed else f"{100 * approvals / reviewed:.1f}%"
        return f"needs {more} more review{'s' if more > 1 else ''} if {share} are approved"
    if reviewed and approvals <= policy.target * reviewed:
        return "keep reviewing: the approval rate is below the target"
    return "keep reviewing: the approval rate is too close to the target to prove it"
