"""The log database: migrations, idempotent batched writes, the spool, outages and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url

from smallops import FakeProvider, Settings, Workflow
from smallops.storage import writer as writer_module
from smallops.storage.db import (
    current_revision,
    get_engine,
    head_revision,
    normalise_url,
    upgrade,
)
from smallops.storage.schema import metadata, runs
from smallops.storage.store import RowStore
from smallops.testing import recorded_runs

from models import GOOD


def _workflow(tmp_path: Path, database_url: str, responder=None) -> Workflow:
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    settings = Settings(root=tmp_path, database_url=database_url)
    from models import Triage

    return Workflow(
        "storage-test",
        model="fake:rules",
        prompt="p.prompt",
        output=Triage,
        fallback="review",
        provider=FakeProvider(responder or (lambda _: GOOD)),
        settings=settings,
        base_dir=tmp_path,
    )


def _engine(url: str, root: Path):
    return get_engine(normalise_url(url, root))


def test_migrations_create_exactly_the_schema_and_downgrade_cleanly(database_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.command import downgrade
    from alembic.migration import MigrationContext

    from smallops.storage.db import alembic_config

    engine = _engine(database_url, tmp_path)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    assert diff == [], f"migrations and schema.py disagree: {diff}"
    downgrade(alembic_config(engine), "base")
    assert not inspect(engine).has_table("runs")
    upgrade(engine)
    assert inspect(engine).has_table("runs")


def test_every_call_is_recorded_once(database_url, tmp_path):
    wf = _workflow(tmp_path, database_url)
    ids = [wf.run(text=f"email {i}").run_id for i in range(300)]
    rows = recorded_runs(wf)
    assert [r["id"] for r in rows] == sorted(ids) and len(set(ids)) == 300
    assert rows[0]["output"] == GOOD and rows[0]["inputs"] == {"text": "email 0"}
    assert rows[0]["started_at"].tzinfo is not None
    with _engine(database_url, tmp_path).connect() as connection:
        versions = connection.exec_driver_sql("SELECT id, template FROM prompt_versions").all()
    assert versions == [(wf.version.id, "[user]\n{{ text }}")]


def test_writing_the_same_rows_twice_keeps_one_copy(database_url, tmp_path):
    wf = _workflow(tmp_path, database_url)
    wf.run(text="a")
    [row] = recorded_runs(wf)
    engine = _engine(database_url, tmp_path)
    store = RowStore(engine)
    with engine.connect() as connection:
        raw = connection.execute(select(runs)).one()
    values = list(raw)
    for column in ("started_at", "finished_at"):
        values[runs.c.keys().index(column)] = row[column].timestamp()
    for column in ("inputs", "messages", "output", "attempts"):
        import json

        values[runs.c.keys().index(column)] = json.dumps(row[column])
    store.write([values])
    store.write([values])
    store.close()
    assert len(recorded_runs(wf)) == 1


def test_runs_spool_while_the_database_is_down_and_replay_when_it_returns(
    postgres_url, tmp_path, monkeypatch
):
    """Postgres behind a proxy that is cut mid-run: every run is present once it is back."""
    from tcpproxy import TcpProxy

    monkeypatch.setattr(writer_module, "PROBE_EVERY", 0.3)
    url = make_url(normalise_url(postgres_url, tmp_path))
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    wf = _workflow(tmp_path, proxied)
    ids = [wf.run(text=f"before {i}").run_id for i in range(50)]
    writer = writer_module.writer_for(wf.settings.log)
    assert writer.flush() and writer.written == 50
    proxy.cut()
    ids += [wf.run(text=f"during {i}").run_id for i in range(200)]
    assert writer.flush()
    assert not writer.healthy and writer.spooled == 200
    assert list((tmp_path / ".smallops" / "spool").rglob("*.jsonl"))
    proxy.restore()
    deadline = time.monotonic() + 15
    while not writer.healthy and time.monotonic() < deadline:
        time.sleep(0.1)
    assert writer.healthy
    ids += [wf.run(text=f"after {i}").run_id for i in range(50)]
    assert sorted(r["id"] for r in recorded_runs(wf)) == sorted(ids)
    proxy.cut()


def test_a_spool_left_by_a_process_that_ended_during_an_outage_is_replayed_later(
    postgres_url, tmp_path
):
    from tcpproxy import TcpProxy

    url = make_url(normalise_url(postgres_url, tmp_path))
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.cut()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    wf = _workflow(tmp_path, proxied)
    ids = [wf.run(text=f"offline {i}").run_id for i in range(20)]
    writer_module.reset()  # the process "exits" with the database still down
    assert len(list((tmp_path / ".smallops" / "spool").rglob("*.jsonl"))) == 1
    proxy.restore()
    assert writer_module.replay_spool(wf.settings.log) == 20
    assert sorted(r["id"] for r in recorded_runs(wf)) == sorted(ids)
    assert not list((tmp_path / ".smallops" / "spool").rglob("*.jsonl"))
    proxy.cut()


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from models import Triage
    from smallops import FakeProvider, Settings, Workflow

    def slow(_):
        time.sleep(0.002)
        return {"category": "billing", "urgency": "normal", "summary": "x"}

    root = Path(sys.argv[1])
    wf = Workflow("sigterm", model="fake:slow", prompt="p.prompt", output=Triage,
                  fallback="review", provider=FakeProvider(slow),
                  settings=Settings(root=root, database_url=sys.argv[2]), base_dir=root)
    while True:
        print(wf.run(text="hello").run_id, flush=True)
    """
)


def test_sigterm_mid_run_keeps_every_completed_call(database_url, tmp_path):
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    script = tmp_path / "worker.py"
    script.write_text(SIGTERM_SCRIPT)
    tests = str(Path(__file__).parent)
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), database_url, tests],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    completed = [process.stdout.readline().strip() for _ in range(300)]
    process.send_signal(signal.SIGTERM)
    completed += [line.strip() for line in process.stdout if line.strip()]
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    engine = _engine(database_url, tmp_path)
    with engine.connect() as connection:
        stored = {row.id for row in connection.execute(select(runs.c.id))}
    assert set(completed) <= stored, f"{len(set(completed) - stored)} completed calls lost"


def test_a_migration_that_fails_half_way_leaves_the_database_as_it_was(
    database_url, tmp_path, monkeypatch
):
    """Every step runs in one transaction: a failure in a later step undoes the earlier ones,
    so the next start migrates from a clean slate instead of repeating half-done work."""
    from alembic.ddl.impl import DefaultImpl

    real_create_table = DefaultImpl.create_table

    def failing_create_table(self, table, *args, **kwargs):
        if table.name == "eval_runs":
            raise RuntimeError("disk full")
        return real_create_table(self, table, *args, **kwargs)

    engine = _engine(database_url, tmp_path)
    monkeypatch.setattr(DefaultImpl, "create_table", failing_create_table)
    try:
        upgrade(engine)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the injected failure did not happen")
    assert current_revision(engine) is None
    assert not inspect(engine).has_table("runs")
    monkeypatch.setattr(DefaultImpl, "create_table", real_create_table)
    upgrade(engine)
    assert current_revision(engine) == head_revision()


MIGRATE_WORKER = textwrap.dedent("""
    import sys, time
    from smallops.storage.db import ensure_schema, get_engine
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    ensure_schema(get_engine(sys.argv[1]))
""")


def test_processes_that_start_together_on_a_new_database_migrate_it_once(tmp_path):
    """Several processes opening one new SQLite log at the same moment: each waits for the
    first to finish; none repeats a step (such as adding a column) the first already did."""
    script = tmp_path / "migrate.py"
    script.write_text(MIGRATE_WORKER)
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'log{attempt}.db'}"
        start = time.time() + 1.5
        workers = [
            subprocess.Popen(
                [sys.executable, str(script), url, str(start)], stderr=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        failures = [w.communicate(timeout=120)[1] for w in workers if w.wait(timeout=120) != 0]
        assert not failures, failures[0][-2000:]
        assert current_revision(get_engine(url)) == head_revision()


def test_several_databases_can_be_set_up_at_once_in_one_process(tmp_path):
    """Alembic's context is global: concurrent first calls to different logs must not collide."""
    import threading

    workflows = []
    for i in range(4):
        folder = tmp_path / f"p{i}"
        folder.mkdir()
        workflows.append(_workflow(folder, f"sqlite:///{folder / 'log.db'}"))
    barrier = threading.Barrier(len(workflows))

    def call(wf: Workflow) -> None:
        barrier.wait()
        wf.run(text="x")

    threads = [threading.Thread(target=call, args=(wf,)) for wf in workflows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for wf in workflows:
        assert len(recorded_runs(wf)) == 1
        assert writer_module.writer_for(wf.settings.log).spooled == 0


def test_a_30_second_database_outage_mid_run_loses_no_record(postgres_url, tmp_path, monkeypatch):
    """Calls keep coming for 40 s; Postgres is unreachable for 30 s of them."""
    from tcpproxy import TcpProxy

    monkeypatch.setattr(writer_module, "PROBE_EVERY", 1.0)
    url = make_url(normalise_url(postgres_url, tmp_path))
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    wf = _workflow(tmp_path, proxied)
    writer = writer_module.writer_for(wf.settings.log)
    ids: list[str] = []
    start = time.monotonic()
    cut = restored = False
    while (elapsed := time.monotonic() - start) < 40:
        if elapsed >= 5 and not cut:
            proxy.cut()
            cut = True
        if elapsed >= 35 and not restored:
            assert not writer.healthy and writer.spooled > 0
            proxy.restore()
            restored = True
        ids.append(wf.run(text=f"call {len(ids)}").run_id)
        time.sleep(0.02)
    deadline = time.monotonic() + 15
    while not writer.healthy and time.monotonic() < deadline:
        time.sleep(0.1)
    assert writer.healthy
    stored = [r["id"] for r in recorded_runs(wf)]
    assert sorted(stored) == sorted(ids) and len(ids) > 1000
    proxy.cut()


def test_the_fast_schema_check_agrees_with_alembic(database_url, tmp_path):
    """ensure_schema skips Alembic when the log records the newest migration file's revision:
    that holds only if every file `NNNN_*.py` is revision "NNNN" and the newest is the head."""
    import re

    from smallops.storage.db import (
        MIGRATIONS,
        ensure_schema,
        newest_file_revision,
        recorded_revision,
    )

    for path in (MIGRATIONS / "versions").glob("*.py"):
        revision = re.search(r'^revision = "(\w+)"', path.read_text(), re.M)
        assert revision and revision.group(1) == path.name[:4], path.name
    assert newest_file_revision() == head_revision()
    engine = _engine(database_url, tmp_path)
    assert recorded_revision(engine) is None  # no table yet: Alembic's path creates it
    ensure_schema(engine)
    assert recorded_revision(engine) == current_revision(engine) == head_revision()
