"""Reading the run rollups (rollups.py writes them): a workflow's production figures over a
range, whole hours from the rollups and a part hour from the runs, and the models that served
a workflow, so reports and /metrics never read every run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from smallops.storage.hours import SQLITE_TIME, epoch
from smallops.storage.rollups import FACT_COLUMNS, TOTAL_COLUMNS, Rollups, Totals
from smallops.storage.schema import run_rollups, runs


@dataclass
class Production:
    """A workflow's production calls (eval traffic left out) over a time range."""

    totals: Totals = field(default_factory=Totals)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    #: The pinned model's route (origin app or unset): models served and mismatches.
    served: Counter[str] = field(default_factory=Counter)
    mismatches: int = 0
    #: The secondary model's calls (origin "fallback").
    fallback_calls: int = 0
    fallback_served: Counter[str] = field(default_factory=Counter)

    def add(self, origin: str, status: str, error: str, served: str, totals: Totals) -> None:
        self.totals.add(totals)
        self.statuses[status] += totals.calls
        if error:
            self.errors[error] += totals.calls
        if origin == "fallback":
            self.fallback_calls += totals.calls
            if served:
                self.fallback_served[served] += totals.calls
        else:
            self.mismatches += totals.model_mismatches
            if served:
                self.served[served] += totals.calls


def production(engine: Engine, since: datetime | None = None) -> dict[str, Production]:
    """Per workflow, its production calls that started at or after `since`: whole hours from
    the rollups, and the part hour at the start of the range from the runs themselves, so the
    figures are those of the runs in the range exactly."""
    if since is not None and since.tzinfo is not None:
        since = since.astimezone(timezone.utc)  # SQLite compares times as UTC text
    whole_hours = _next_hour(since) if since is not None else None
    with engine.connect() as connection:
        out = production_of(hour_rows(connection, whole_hours))
        if since is not None and whole_hours is not None and since < whole_hours:
            for key, totals in _part_hour(connection, since, whole_hours).items():
                workflow, origin, status, error, _, served = key[1:7]
                out.setdefault(workflow, Production()).add(origin, status, error, served, totals)
    return out


#: The rollups of a range of whole hours, as the database sums them: per group (workflow,
#: origin, status, error type, model served) its totals, and per workflow its latency buckets.
HourRows = tuple[list[tuple[str, str, str, str, str, Totals]], dict[str, Counter[int]]]


def hour_rows(
    connection: Connection, since: datetime | None = None, until: datetime | None = None
) -> HourRows:
    """The production rollups of the whole hours in [since, until)."""
    return (
        list(_rollup_groups(connection, since, until)),
        _histograms(connection, since, until),
    )


def production_of(*parts: HourRows) -> dict[str, Production]:
    """Per workflow, the production figures of these ranges of hours added up."""
    out: dict[str, Production] = {}
    for groups, histograms in parts:
        for workflow, origin, status, error, served, totals in groups:
            out.setdefault(workflow, Production()).add(origin, status, error, served, totals)
        for workflow, histogram in histograms.items():
            out.setdefault(workflow, Production()).totals.histogram.update(histogram)
    return out


def _next_hour(moment: datetime) -> datetime:
    moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment
    start = moment.replace(minute=0, second=0, microsecond=0)
    return start if start == moment else start + timedelta(hours=1)


_NOT_EVAL = run_rollups.c.origin != "eval"


def _rollup_groups(
    connection: Connection, since: datetime | None, until: datetime | None = None
) -> Iterator[tuple[str, str, str, str, str, Totals]]:
    r = run_rollups.c
    groups = (r.workflow, r.origin, r.status, r.error_type, r.model_served)
    query = select(
        *groups,
        *(func.sum(r[name]).label(name) for name in TOTAL_COLUMNS),
        func.min(r.latency_min_ms).label("low"),
        func.max(r.latency_max_ms).label("high"),
    ).where(_NOT_EVAL)
    if since is not None:
        query = query.where(r.hour >= since)
    if until is not None:
        query = query.where(r.hour < until)
    for row in connection.execute(query.group_by(*groups)):
        totals = Totals.summed(row)
        yield row.workflow, row.origin, row.status, row.error_type, row.model_served, totals


def _histograms(
    connection: Connection, since: datetime | None, until: datetime | None = None
) -> dict[str, Counter[int]]:
    """Per workflow, the production latency histogram, summed by the database."""
    postgres = connection.dialect.name == "postgresql"
    each = "jsonb_each_text" if postgres else "json_each"
    count = "b.value::bigint" if postgres else "b.value"
    where = "r.origin != 'eval'" + (" AND r.hour >= :since" if since is not None else "")
    where += " AND r.hour < :until" if until is not None else ""
    sql = (
        f"SELECT r.workflow, b.key, sum({count}) FROM run_rollups AS r, "
        f"{each}(r.latency_histogram) AS b WHERE {where} GROUP BY r.workflow, b.key"
    )
    params: dict[str, Any] = {}
    for name, moment in (("since", since), ("until", until)):
        if moment is not None:
            params[name] = moment if postgres else moment.strftime(SQLITE_TIME)
    out: dict[str, Counter[int]] = {}
    for workflow, bucket, n in connection.exec_driver_sql(_named(sql, postgres), params):
        out.setdefault(workflow, Counter())[int(bucket)] += int(n)
    return out


def _named(sql: str, postgres: bool) -> str:
    """The :name parameters in the driver's own style."""
    if not postgres:
        return sql
    return sql.replace(":since", "%(since)s").replace(":until", "%(until)s")


def _part_hour(connection: Connection, since: datetime, until: datetime) -> Rollups:
    columns = [runs.c[name] for name in FACT_COLUMNS]
    query = select(*columns).where(
        runs.c.started_at >= since,
        runs.c.started_at < until,
        (runs.c.origin.is_(None)) | (runs.c.origin != "eval"),
    )
    rollups = Rollups()
    for row in connection.execute(query):
        fact = list(row)
        fact[0] = epoch(fact[0])
        rollups.add_fact(fact)
    return rollups


def served_models(connection: Connection, workflow: str) -> list[dict[str, Any]] | None:
    """Each model that served the workflow's pinned route (origin app or unset), with its calls
    and its first and last start to the microsecond: the hours from the rollups, the moments
    from the runs of those hours only. None when the rollups and the runs disagree (runs edited
    by hand since the last rebuild): the caller then reads the runs."""
    r = run_rollups.c
    query = (
        select(r.model_served, func.min(r.hour), func.max(r.hour), func.sum(r.calls))
        .where(r.workflow == workflow, r.model_served != "", r.origin.in_(("", "app")))
        .group_by(r.model_served)
    )
    out = []
    for model, first_hour, last_hour, calls in connection.execute(query).all():
        first = _moment(connection, workflow, model, _utc(first_hour), func.min)
        last = _moment(connection, workflow, model, _utc(last_hour), func.max)
        if first is None or last is None:
            return None
        out.append({"model": model, "first_seen": first, "last_seen": last, "calls": int(calls)})
    return sorted(out, key=lambda row: row["first_seen"])


def _moment(
    connection: Connection, workflow: str, model: str, hour: datetime, pick: Any
) -> datetime | None:
    query = select(pick(runs.c.started_at)).where(
        runs.c.workflow == workflow,
        runs.c.started_at >= hour,
        runs.c.started_at < hour + timedelta(hours=1),
        runs.c.model_served == model,
        (runs.c.origin.is_(None)) | (runs.c.origin == "app"),
    )
    found = connection.execute(query).scalar()
    return None if found is None else _utc(found)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
