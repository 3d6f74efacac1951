"""Label rollups: per hour, workflow and prompt version, how often each label field of the
output took each value, so the week-over-week drift check reads a few hundred rows rather than
two weeks of runs (at a million runs, reading their outputs took most of `smallops report`).

A label field is an enum or Literal field of the prompt version's output schema (labels.py),
such as a category; free text is never counted. Only the pinned model's production calls count
(origin `app`, or none for logs older than origins): eval traffic is not production, and a
secondary model's answers are fallback, not drift. A value is kept as its JSON text (ASCII, so
any value is storable); one longer than VALUE_LIMIT (no label is) is left out.

Like the run rollups (rollups.py), the log writer adds a batch's counts in the transaction that
inserts its runs, for the runs that transaction inserted only, with one upsert per key; and
`rebuild` recomputes them from the runs (rollups.rebuild does both), for logs written before
they existed, imports and edits.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, case, func, or_, select

from smallops.labels import enum_fields
from smallops.storage.hours import SQLITE_TIME, epoch, hour_of
from smallops.storage.schema import RUN_COLUMNS, label_rollups, prompt_versions, runs

#: The longest value text counted (the width of the column).
VALUE_LIMIT = 200
#: The longest field name counted (the width of the column).
FIELD_LIMIT = 100
_WORKFLOW, _ORIGIN, _VERSION, _OUTPUT, _STARTED = (
    RUN_COLUMNS.index(name)
    for name in ("workflow", "origin", "prompt_version", "output", "started_at")
)

Key = tuple[int, str, str, str, str]  # hour (epoch seconds), workflow, version, field, value
#: Each prompt version's label fields, as its stored schema gives them. A version id is a hash
#: of what the version is, so what is learnt of one holds for every log.
_fields_of_version: dict[str, tuple[str, ...]] = {}


def fields_of(schema: Any) -> tuple[str, ...]:
    """The label fields of an output schema (stored as JSON text or as an object)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            return ()
    if not isinstance(schema, dict):
        return ()
    return tuple(name for name in enum_fields(schema) if _storable(name))


def _storable(name: str) -> bool:
    """A field name both engines store as it is: printable (no NUL), valid UTF-8 (no lone
    surrogate), and within the column. Anything else is not counted, so a label can never make
    the database refuse the runs it came with."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return name.isprintable() and 0 < len(name) <= FIELD_LIMIT


def counted(
    hour: int, workflow: str, version: str, output: Any, fields: Iterable[str]
) -> Iterable[Key]:
    """The keys one run's output adds one to: each label field it holds, with its value."""
    if isinstance(output, str):
        try:
            output = json.loads(output)
        except ValueError:
            return
    if not isinstance(output, dict):
        return
    for name in fields:
        if name in output:
            value = output[name]
            text = json.dumps(value, sort_keys=True)  # ASCII: no NUL or lone surrogate
            if len(text) <= VALUE_LIMIT:
                yield (hour, workflow, version, name, text)


def counts_of_run_rows(
    connection: Any, dialect: str, rows: Sequence[Sequence[Any]]
) -> Counter[Key]:
    """The counts of `runs` rows in RUN_COLUMNS order with epoch-second starts (the writer's),
    looking up in the caller's transaction the label fields of versions not seen before."""
    primary = [row for row in rows if row[_ORIGIN] in (None, "app") and row[_OUTPUT] is not None]
    _learn(connection, dialect, {row[_VERSION] for row in primary})
    counts: Counter[Key] = Counter()
    for row in primary:
        fields = _fields_of_version.get(row[_VERSION], ())
        if fields:
            hour = hour_of(row[_STARTED])
            counts.update(counted(hour, row[_WORKFLOW], row[_VERSION], row[_OUTPUT], fields))
    return counts


def forget_versions() -> None:
    """Forget the label fields learned per prompt version (as `writer.reset` does): a version
    id names one schema, but tests (and a process that switches databases) may reuse an id."""
    _fields_of_version.clear()


def _learn(connection: Any, dialect: str, versions: Collection[str]) -> None:
    unknown = [v for v in versions if v not in _fields_of_version]
    if not unknown:
        return
    marks = ", ".join(["?" if dialect == "sqlite" else "%s"] * len(unknown))
    sql = f"SELECT id, output_schema FROM prompt_versions WHERE id IN ({marks})"
    cursor = connection.cursor()
    try:
        cursor.execute(sql, unknown)
        for version, schema in cursor.fetchall():
            _fields_of_version[version] = fields_of(schema)
    finally:
        cursor.close()


def merge(execute_many: Any, dialect: str, counts: Mapping[Key, int]) -> None:
    """Add `counts` to the table in the caller's transaction, one upsert per key, in key order
    (two Postgres writers never wait on each other's rows in opposite orders)."""
    if not counts:
        return
    postgres = dialect == "postgresql"
    rows = []
    for key in sorted(counts):
        started = datetime.fromtimestamp(key[0], timezone.utc)
        hour = started if postgres else started.strftime(SQLITE_TIME)
        rows.append((hour, *key[1:], counts[key]))
    execute_many(_UPSERT_PG if postgres else _UPSERT_SQLITE, rows)


def _upsert(marker: str) -> str:
    columns = "hour, workflow, prompt_version, field, value, calls"
    return (
        f"INSERT INTO label_rollups ({columns}) VALUES ({', '.join([marker] * 6)}) "
        "ON CONFLICT (hour, workflow, prompt_version, field, value) "
        "DO UPDATE SET calls = label_rollups.calls + excluded.calls"
    )


_UPSERT_SQLITE = _upsert("?")
_UPSERT_PG = _upsert("%s")


def all_fields(connection: Connection) -> dict[str, tuple[str, ...]]:
    """Every prompt version's label fields (for a rebuild)."""
    query = select(prompt_versions.c.id, prompt_versions.c.output_schema)
    return {version: fields_of(schema) for version, schema in connection.execute(query)}


_REBUILD_CHUNK = 5_000
#: Keys gathered in memory before they are merged: bounds a rebuild's memory.
_REBUILD_FLUSH_KEYS = 50_000


def rebuild_in(connection: Connection, execute_many: Any) -> int:
    """Recompute the label rollups from the runs in the caller's transaction (rollups.rebuild
    calls it, after it has locked the run rollups: a writer upserts those first, so none can
    add label counts meanwhile); returns the rows made."""
    fields = all_fields(connection)
    connection.execute(label_rollups.delete())
    r = runs.c
    query = select(r.started_at, r.workflow, r.prompt_version, r.output).where(
        or_(r.origin.is_(None), r.origin == "app"),
        r.output.is_not(None),
        r.prompt_version.in_([version for version, names in fields.items() if names]),
    )
    pending: Counter[Key] = Counter()
    dialect = connection.dialect.name
    streamed = query.execution_options(stream_results=True, yield_per=_REBUILD_CHUNK)
    for chunk in connection.execute(streamed).partitions(_REBUILD_CHUNK):
        for started, workflow, version, output in chunk:
            hour = hour_of(epoch(started))
            pending.update(counted(hour, workflow, version, output, fields[version]))
        if len(pending) >= _REBUILD_FLUSH_KEYS:
            merge(execute_many, dialect, pending)
            pending = Counter()
    merge(execute_many, dialect, pending)
    return int(connection.execute(select(func.count()).select_from(label_rollups)).scalar_one())


def value_counts(
    engine: Engine,
    workflow: str,
    fields: Collection[str],
    *,
    since: datetime,
    split: datetime,
    until: datetime,
) -> dict[str, tuple[dict[Any, int], dict[Any, int]]]:
    """Per field: how often each value was output by the workflow's pinned route in the hours
    from `split` to `until` and from `since` to `split` (each moment taken to its hour). Values
    equal once read (1 and 1.0) are counted together; an object or a list by its JSON text."""
    r = label_rollups.c
    later = case((r.hour >= split, 1), else_=0).label("later")
    query = (
        select(later, r.field, r.value, func.sum(r.calls))
        .where(
            r.workflow == workflow,
            r.field.in_(list(fields)),
            r.hour >= since,
            r.hour < until,
        )
        .group_by(later, r.field, r.value)
    )
    out: dict[str, tuple[dict[Any, int], dict[Any, int]]] = {name: ({}, {}) for name in fields}
    with engine.connect() as connection:
        for is_later, name, text, calls in connection.execute(query):
            value = json.loads(text)
            if isinstance(value, (dict, list)):
                value = json.dumps(value, sort_keys=True)
            week = out[name][0] if is_later else out[name][1]
            week[value] = week.get(value, 0) + int(calls)
    return out
