"""Alembic environment: runs smallops' migrations on the engine the caller passes in."""

from __future__ import annotations

from alembic import context

from smallops.storage.rollups import rebuild_in
from smallops.storage.schema import metadata

MIGRATION_LOCK = 7_465_301  # Postgres advisory lock id: one migrating process at a time
#: The revisions that added rollups (run rollups, label rollups): a log upgraded past one of them
#: gets them computed from its runs.
ROLLUP_REVISIONS = ("0007", "0009")

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    # One transaction around the version check and every step, opened here so Alembic runs
    # inside it. On SQLite it starts with BEGIN IMMEDIATE: processes that start together on a
    # new database take the write lock before reading the schema version, so the second one
    # sees the first one's finished work instead of repeating a step half-way through it.
    connection = connection.execution_options(smallops_immediate=True)
    with connection.begin():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        migration = context.get_context()
        before = migration.get_current_revision()
        context.run_migrations()
        after = migration.get_current_revision()
        if before is not None and any(before < r <= (after or "") for r in ROLLUP_REVISIONS):
            # A log that had runs before the rollups existed: computed in this transaction,
            # so a failed rebuild leaves the log as it was, to be upgraded again.
            rebuild_in(connection)
