"""The review queue's and the runs browser's reads are served by indexes (SQLite's query plan
names them; Postgres is checked with EXPLAIN ANALYZE in bench/desk_load.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event

from smallops.storage import review_log
from smallops.storage.db import ensure_schema
from smallops.storage.queries import list_runs


def sqlite(tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    ensure_schema(engine)
    return engine


def plan_of(engine: Engine, read: Callable[[], Any]) -> str:
    """SQLite's query plan of the statement `read` executes, as one line per step."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        read()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = next((s, p) for s, p in seen if s.lstrip().startswith("SELECT"))
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return "\n".join(str(row[-1]) for row in rows)


def test_the_pending_queue_of_every_workflow_is_read_in_order_from_an_index(tmp_path):
    engine = sqlite(tmp_path)

    def queue() -> Any:
        with engine.connect() as connection:
            return review_log.list_items(connection, None, "pending", 200)

    plan = plan_of(engine, queue)
    assert "ix_review_items_pending" in plan and "TEMP B-TREE" not in plan, plan


def test_claim_next_takes_the_oldest_free_item_from_an_index(tmp_path):
    engine = sqlite(tmp_path)
    now = datetime.now(timezone.utc)

    def claim() -> Any:
        with engine.connect() as connection:
            return _next(connection, now)

    plan = plan_of(engine, claim)
    assert "ix_review_items_pending" in plan and "TEMP B-TREE" not in plan, plan


def _next(connection: Connection, now: datetime) -> str | None:
    return review_log.next_free_item(connection, "ann", now, None, ())


def test_logs_by_status_or_error_type_do_not_scan_every_run(tmp_path):
    engine = sqlite(tmp_path)
    plan = plan_of(engine, lambda: list_runs(engine, status="error", origin="all"))
    assert "ix_runs_status_id" in plan and "ix_runs_error_type_id" in plan, plan
    assert "SCAN runs" not in plan.replace("SCAN runs USING", ""), plan
