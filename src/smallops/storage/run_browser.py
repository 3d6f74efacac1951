"""The runs browser's query: runs newest first under filters, a page at a time.

Pages are keyset pages, never OFFSET: a page ends with a run, and the next one starts after it
in (started_at, id) order, so the indexes on `started_at` (ix_runs_started,
ix_runs_workflow_started) serve both the order and the time range, a run id breaks ties between
runs that started in the same instant, and a page costs the same at the millionth run as at the
first. A run written between two pages never shifts the next one.

A text search has no index to use: it reads the JSON text of each run's inputs and output. So a
page of search results examines at most `scan` runs (the newest that pass the other filters);
when those hold fewer matches than a page, the page says how far back it searched and hands
back the last run it examined as the cursor to search on from. Matching is case-insensitive
(Unicode too) and literal: `%`, `_` and `\\` in the query are plain characters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, case, cast, false, func, or_, select
from sqlalchemy import Text as SqlText

from smallops.errors import InputError
from smallops.kinds import OriginFilter
from smallops.storage.queries import PRODUCTION, SUMMARY, plain_row
from smallops.storage.schema import runs

#: Runs a page shows unless asked for fewer.
PAGE = 50
#: The most runs one page examines for the filters no index serves (status, error type, origin,
#: prompt version), and with a text search: bounds on a page's work, not on what it finds.
SCAN = 10_000
SEARCH_SCAN = 2_500
#: Runs a page may be asked to show.
MAX_PAGE = 200

_COLUMNS = (*SUMMARY, runs.c.content, runs.c.inputs, runs.c.output)
_FOLD = "smallops_casefold"


@dataclass(frozen=True)
class RunFilters:
    """What the browser narrows the runs to; None (or "all") means any."""

    workflow: str | None = None
    status: str | None = None
    error_type: str | None = None
    origin: OriginFilter = "production"
    prompt_version: str | None = None
    since: datetime | None = None  # started at or after
    until: datetime | None = None  # started before
    q: str | None = None  # text in the inputs or the output


@dataclass(frozen=True)
class RunsPage:
    """One page: its runs (SUMMARY's columns plus content, inputs and output), the run id to
    continue after (None at the end), and, for a search that stopped at its bound with fewer
    matches than a page, the start time of the last run it examined."""

    runs: list[dict[str, Any]]
    next_after: str | None
    searched_to: datetime | None = None
    examined: int = 0


def browse_runs(
    engine: Engine,
    filters: RunFilters,
    *,
    after: str | None = None,
    limit: int = PAGE,
    scan: int | None = None,
) -> RunsPage:
    """The page of runs after the run `after` (from the newest when None), newest first.

    The workflow and the time range narrow the runs through an index; the other filters (and
    the text search) are checked on at most `scan` of those runs per page (default SCAN, or
    SEARCH_SCAN with a text search). InputError if `after` names no run (a cursor from another
    log, or made up)."""
    with engine.connect() as connection:
        indexed = [
            *_indexed(connection, filters),
            *_after(connection, after),
        ]
        checked = _checked(connection, filters)
        if checked is None:
            query = select(*_COLUMNS).where(*indexed).order_by(*_NEWEST).limit(limit + 1)
            rows = [plain_row(row._mapping) for row in connection.execute(query)]
            more = len(rows) > limit
            rows = rows[:limit]
            return RunsPage(rows, rows[-1]["id"] if more else None, examined=len(rows))
        bound = scan or (SEARCH_SCAN if filters.q else SCAN)
        return _window(connection, indexed, checked, limit, bound)


_NEWEST = (runs.c.started_at.desc(), runs.c.id.desc())


def _indexed(connection: Connection, filters: RunFilters) -> list[ColumnElement[bool]]:
    """The filters an index on `started_at` serves, in the browser's order."""
    conditions: list[ColumnElement[bool]] = []
    if filters.workflow:
        conditions.append(runs.c.workflow.in_(_spellings(connection, filters.workflow)))
    if filters.since:
        conditions.append(runs.c.started_at >= filters.since)
    if filters.until:
        conditions.append(runs.c.started_at < filters.until)
    return conditions


def _spellings(connection: Connection, name: str) -> list[str]:
    """The spellings of a workflow name (- and _ alike) that have runs: one, nearly always, so
    that the index on (workflow, started_at) gives the runs already in order."""
    spellings = sorted({name, name.replace("_", "-"), name.replace("-", "_")})
    if len(spellings) == 1:
        return spellings
    used = [
        spelling
        for spelling in spellings
        if connection.execute(select(runs.c.id).where(runs.c.workflow == spelling).limit(1)).first()
    ]
    return used or [name]


def _checked(connection: Connection, filters: RunFilters) -> ColumnElement[bool] | None:
    """The filters checked run by run (no index serves them in the browser's order), as one
    condition; None when there are none."""
    conditions: list[ColumnElement[bool]] = []
    if filters.origin == "production":
        conditions.append(PRODUCTION)
    elif filters.origin == "eval":
        conditions.append(runs.c.origin == "eval")
    if filters.status:
        conditions.append(runs.c.status == filters.status)
    if filters.error_type:
        conditions.append(runs.c.error_type == filters.error_type)
    if filters.prompt_version:
        conditions.append(runs.c.prompt_version == filters.prompt_version)
    if filters.q:
        conditions.append(_matches(connection, filters.q))
    if not conditions:
        return None
    return and_(*conditions) if len(conditions) > 1 else conditions[0]


def _after(
    connection: Connection, after: str | None, *, checked: bool = True
) -> list[ColumnElement[bool]]:
    """Runs after the run `after` in the browser's order: started earlier, or at the same
    instant with a smaller id. Its start is compared as stored (a subquery), never as Python
    read it back."""
    if after is None:
        return []
    known = not checked or connection.execute(select(runs.c.id).where(runs.c.id == after)).first()
    if not known:
        raise InputError(
            f"the page cursor {after!r} names no run in this log",
            hint="start from the first page (drop `after=` from the address)",
        )
    started = select(runs.c.started_at).where(runs.c.id == after).scalar_subquery()
    return [
        runs.c.started_at <= started,
        or_(runs.c.started_at < started, runs.c.id < after),
    ]


def _window(
    connection: Connection,
    indexed: list[ColumnElement[bool]],
    checked: ColumnElement[bool],
    limit: int,
    scan: int,
) -> RunsPage:
    """Up to `scan` runs that pass the `indexed` filters, newest first, each checked against
    `checked`; a page of the first `limit` that pass. The runs are read in growing steps (a
    few pages' worth first), so a filter most runs pass reads little more than a page."""
    hit = case((checked, 1), else_=0).label("hit")
    window = select(runs.c.id, runs.c.started_at, hit).order_by(*_NEWEST)
    hits: list[str] = []
    examined, step, last = 0, limit * 4, None
    while True:
        step = min(step, scan - examined)
        where = [*indexed, *(_after(connection, last.id, checked=False) if last else [])]
        rows = connection.execute(window.where(*where).limit(step)).all()
        examined += len(rows)
        hits += [row.id for row in rows if row.hit]
        if rows:
            last = rows[-1]
        if len(hits) > limit or len(rows) < step or examined >= scan:
            break
        step *= 4
    searched_to = None
    if len(hits) > limit:
        hits = hits[:limit]
        next_after: str | None = hits[-1]
    elif examined >= scan and last is not None:
        next_after = last.id
        searched_to = plain_row({"at": last.started_at})["at"]
    else:
        next_after = None
    found: list[dict[str, Any]] = []
    if hits:
        query = select(*_COLUMNS).where(runs.c.id.in_(hits)).order_by(*_NEWEST)
        found = [plain_row(row._mapping) for row in connection.execute(query)]
    return RunsPage(found, next_after, searched_to, examined)


def _matches(connection: Connection, q: str) -> ColumnElement[bool]:
    """Whether `q` appears in a run's inputs or output, as their JSON text has it (a quote or
    a line break in `q` is looked for as JSON writes it), ignoring case."""
    needle = json.dumps(q, ensure_ascii=False)[1:-1]
    if not needle:
        return false()
    if connection.dialect.name == "postgresql":
        pattern = "%" + _escape_like(needle) + "%"
        return or_(
            cast(runs.c.inputs, SqlText).ilike(pattern, escape="\\"),
            cast(runs.c.output, SqlText).ilike(pattern, escape="\\"),
        )
    # SQLite folds case for ASCII only: fold both sides in Python, then look for the text.
    _register_fold(connection)
    folded = needle.casefold()
    return or_(_instr(runs.c.inputs, folded), _instr(runs.c.output, folded))


def _instr(column: Any, folded: str) -> ColumnElement[bool]:
    text = func.smallops_casefold(cast(column, SqlText))
    return func.coalesce(func.instr(text, folded), 0) > 0


def _register_fold(connection: Connection) -> None:
    """Give this SQLite connection `smallops_casefold(text)`, Python's str.casefold."""
    raw: Any = connection.connection.driver_connection
    raw.create_function(_FOLD, 1, _casefold, deterministic=True)


def _casefold(value: Any) -> str | None:
    """JSON text folded for a case-insensitive match, with any \\u escapes of non-ASCII
    characters (JSON written with ensure_ascii, as SQLAlchemy's is) read as the characters."""
    if not isinstance(value, str):
        return None
    text: str = _ESCAPED.sub(_unescape, value) if "\\u" in value else value
    return text.casefold()


_ESCAPED = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})|\\u([0-9a-f]{4})", re.I)


def _unescape(match: re.Match[str]) -> str:
    if match.group(3) is None:  # a surrogate pair: one character beyond the BMP
        high, low = int(match.group(1), 16), int(match.group(2), 16)
        return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
    point = int(match.group(3), 16)
    return chr(point) if point >= 0x80 and not 0xD800 <= point < 0xE000 else match.group(0)


def _escape_like(text: str) -> str:
    """`text` as a literal in a LIKE pattern with ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
