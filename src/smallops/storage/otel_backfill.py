"""Export items read back from the log: the runs logged since a moment (the backfill of
`smallops export otel`), the runs the log writer tells the export process it committed
(otel_child.py), and the prompt parameters of runs replayed from the spool (writer.py).

Apart from otel_export.py, the live export (its queue, thread and SDK), because these are
queries on the log and the live export makes none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, or_, select

from smallops.storage.otel_export import SpanExport
from smallops.storage.otel_items import Item
from smallops.storage.prompt_parts import expand_runs
from smallops.storage.schema import RUN_COLUMNS, prompt_versions, runs
from smallops.trace_context import parse as parse_parent

_RUN_ID = RUN_COLUMNS.index("id")
_PROMPT_VERSION = RUN_COLUMNS.index("prompt_version")


def prompt_params(engine: Engine, rows: Iterable[Any]) -> dict[Any, dict[str, Any] | None]:
    """Per run id, its prompt version's parameters as the log holds them (for runs written
    from the spool, whose records are gone); `rows` are `runs` rows in RUN_COLUMNS order."""
    versions = {row[_RUN_ID]: row[_PROMPT_VERSION] for row in rows}
    with engine.connect() as connection:
        found = _params_of(connection, versions.values())
    return {run_id: _as_dict(found.get(version)) for run_id, version in versions.items()}


def _as_dict(params: Any) -> dict[str, Any] | None:
    if isinstance(params, str):
        params = json.loads(params)
    return params if isinstance(params, dict) else None


BACKFILL_CHUNK = 500  # runs read and sent at a time


def backfill(engine: Engine, since: datetime, export: SpanExport | None = None) -> tuple[int, int]:
    """Send the runs logged since `since` as spans, oldest first, with the ids a live export
    gave them: sending twice sends the same spans. Returns (runs read, spans accepted)."""
    from smallops.storage.queries import plain_row  # not loaded by the live export

    export = export or SpanExport()
    params: dict[str, Any] = {}
    read = accepted = 0
    after: tuple[Any, Any] | None = None
    with engine.connect() as connection:
        while True:
            query = select(runs).where(runs.c.started_at >= since)
            if after is not None:
                query = query.where(
                    or_(
                        runs.c.started_at > after[0],
                        and_(runs.c.started_at == after[0], runs.c.id > after[1]),
                    )
                )
            query = query.order_by(runs.c.started_at, runs.c.id).limit(BACKFILL_CHUNK)
            rows = [plain_row(row._mapping) for row in connection.execute(query)]
            if not rows:
                break
            accepted += export.send_now(_logged_items(connection, rows, params))
            read += len(rows)
            after = (rows[-1]["started_at"], rows[-1]["id"])
    return read, accepted


def logged_items(engine: Engine, run_ids: list[Any]) -> list[Item]:
    """The export items of these runs as the log holds them (what the export process reads,
    given only the ids of the runs the log writer committed)."""
    from smallops.storage.queries import plain_row  # not loaded by the live export

    items: list[Item] = []
    params: dict[str, Any] = {}
    with engine.connect() as connection:
        for start in range(0, len(run_ids), BACKFILL_CHUNK):
            chunk = run_ids[start : start + BACKFILL_CHUNK]
            query = select(runs).where(runs.c.id.in_(chunk))
            rows = [plain_row(row._mapping) for row in connection.execute(query)]
            items.extend(_logged_items(connection, rows, params))
    return items


def _logged_items(
    connection: Any, rows: list[dict[str, Any]], params: dict[str, Any]
) -> list[Item]:
    """Items of rows read from the log: prompt parts put back, prompt parameters looked up
    (`params` caches them across calls)."""
    expand_runs(connection, rows)
    wanted = {row["prompt_version"] for row in rows} - params.keys()
    if wanted:
        params.update(_params_of(connection, wanted))
    return [
        (row, params.get(row["prompt_version"]), parse_parent(row.get("trace_parent")))
        for row in rows
    ]


def _params_of(connection: Any, versions: Iterable[Any]) -> dict[Any, Any]:
    """Per id among `versions`, that prompt version's parameters as the log holds them."""
    query = select(prompt_versions.c.id, prompt_versions.c.params).where(
        prompt_versions.c.id.in_(sorted(set(versions)))
    )
    return {row.id: row.params for row in connection.execute(query)}
