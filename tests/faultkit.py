"""What the process-level fault tests share: the CLI in a real process, inputs, counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.store import RowStore

from models import GOOD as GOOD  # what the emulator answers by default in these tests
from tcpproxy import TcpProxy


def cli(project: Path, url: str, *args: str, **env: str) -> subprocess.Popen[str]:
    """`smallops -p PROJECT ARGS...` in its own process, on the log database at `url`."""
    environment = {
        **os.environ,
        "SMALLOPS_DATABASE_URL": url,
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from smallops.cli import main; main()", "-p", str(project), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def inputs_file(path: Path, n: int, prefix: str = "mail") -> Path:
    lines = [
        json.dumps({"sender": "c@x.example", "subject": f"{prefix} {i}", "body": "hi"})
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def proxied(url: str, root: Path) -> tuple[TcpProxy, str]:
    """A TCP proxy in front of the Postgres at `url`, and the URL that goes through it."""
    parsed = make_url(normalise_url(url, root))
    proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    through = parsed.set(host="127.0.0.1", port=proxy.port)
    return proxy, through.render_as_string(hide_password=False)


def engine_of(url: str, root: Path) -> Any:
    engine = get_engine(normalise_url(url, root))
    ensure_schema(engine)
    return engine


def count(url: str, root: Path, sql: str, **params: Any) -> int:
    with engine_of(url, root).connect() as connection:
        return int(connection.execute(text(sql), params).scalar_one())


def orphans(url: str, root: Path) -> int:
    """Runs routed to a human that have no review item (a run and its item go together)."""
    return count(
        url,
        root,
        "SELECT count(*) FROM runs r LEFT JOIN review_items i ON i.run_id = r.id "
        "WHERE i.run_id IS NULL AND r.review_route IN "
        "('required', 'sampled', 'not_graduated', 'audit', 'fallback')",
    )


def refuse_poison(engine: Any) -> None:
    """Make the database refuse any run whose inputs mention "poison" (a record one engine
    takes and another does not, in miniature)."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(
                "ALTER TABLE runs ADD CONSTRAINT refuse_poison "
                "CHECK (position('poison' in inputs::text) = 0)"
            )
        else:
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON runs "
                "WHEN instr(NEW.inputs, 'poison') > 0 "
                "BEGIN SELECT RAISE(ABORT, 'poison refused'); END"
            )


def database_down(monkeypatch: Any) -> None:
    """Every log write and ping fails as a refused connection would."""

    def down(self: Any, *args: Any) -> None:
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(RowStore, "write", down)
    monkeypatch.setattr(RowStore, "ping", down)
