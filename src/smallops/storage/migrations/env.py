"""Alembic environment: runs smallops' migrations on the engine the caller passes in."""

from __future__ import annotations

from alembic import context

from smallops.storage.schema import metadata

MIGRATION_LOCK = 7_465_301  # Postgres advisory lock id: one migrating process at a time

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    # SQLite: take the write lock before reading the schema version, so processes that start
    # together on a new database migrate one after the other instead of failing as "locked".
    connection = connection.execution_options(smallops_immediate=True)
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            context.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        context.run_migrations()
