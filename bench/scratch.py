"""A scratch Postgres schema for a bench: made fresh, named for the bench, dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from smallops.storage.db import normalise_url


@contextlib.contextmanager
def pg_schema(pg_url: str, bench: str, keep: bool = False) -> Iterator[str]:
    """A new schema on the Postgres at `pg_url`; yields a URL whose search_path is that schema.
    Dropped afterwards unless `keep`."""
    url = make_url(normalise_url(pg_url, Path.cwd()))
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"smallops_{bench}_{os.getpid()}_{time.monotonic_ns()}"
    with admin.connect() as c:
        c.execute(text(f"CREATE SCHEMA {name}"))
    try:
        yield url.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(False)
    finally:
        if not keep:
            with admin.connect() as c:
                c.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()
