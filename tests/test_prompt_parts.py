"""Prompt parts: repeated prompt text is stored once, and every reader still gets what was sent.

The central property: a run written with its parts compacted reads back exactly as the same run
written inline (the way every run was stored before prompt parts), on SQLite and Postgres,
whatever its messages hold (NUL, lone surrogates, odd Unicode, huge text, secrets, things that
look like references) and however its attempts went (retries, repairs, requests of any shape).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select, update

from smallops.ids import uuid7
from smallops.records import Pricing, PromptVersion, RunRecord, Usage, WorkflowFacts
from smallops.redact import Redactor
from smallops.storage import prompt_parts as parts_module
from smallops.storage import prune as retention
from smallops.storage import store as store_module
from smallops.storage.db import ensure_schema, get_engine, normalise_url, upgrade
from smallops.storage.quarantine import Quarantine
from smallops.storage.queries import get_run, runs_of
from smallops.storage.rows import Parts, encode, run_row
from smallops.storage.schema import RUN_COLUMNS, prompt_parts, review_items, runs
from smallops.storage.spool import Spool
from smallops.storage.store import RowBatch, RowStore, land

from conftest import EMAIL, GOOD, smallops
from emulators import ok

SECRET = "hunter2-very-secret-value"
SYSTEM = "You triage inbound email for Acme Ops. " * 60  # about 2.3 KB, like the demo's
SCHEMA = {"type": "object", "properties": {"category": {"enum": ["billing", "support"]}}}


def _engine(url: str, root: Path) -> Any:
    engine = get_engine(normalise_url(url, root))
    ensure_schema(engine)
    return engine


def _facts(workflow: str = "triage", version: str = "v1", content: str = "full") -> WorkflowFacts:
    prompt = PromptVersion(version, workflow, "[system]\n...", None, "m", {})
    return WorkflowFacts(
        workflow=workflow,
        prompt=prompt,
        git_commit=None,
        provider="fake",
        endpoint=None,
        model_requested="m",
        allow_unpinned=False,
        review_policy="none",
        origin="app",
        content=content,  # type: ignore[arg-type]
        label_fields=("category",),
        fallback="raise",
        pricing=Pricing(vendor=None, override=None),
    )


def _record(
    messages: Any,
    attempts: Any,
    *,
    facts: WorkflowFacts | None = None,
    started_at: float | None = None,
    run_id: str | None = None,
    route: Any = None,
) -> RunRecord:
    return RunRecord(
        id=run_id or uuid7(),
        facts=facts or _facts(),
        status="pending_review" if route else "auto",
        error_type=None,
        error_message=None,
        model_served="m",
        system_fingerprint=None,
        attempt_count=len(attempts),
        usage=Usage(10, 5),
        latency_ms=1.5,
        started_at=time.time() if started_at is None else started_at,
        inputs={"body": "hello"},
        messages=messages,
        output={"category": "billing", "summary": "a refund"},
        attempts=attempts,
        review_route=route,
        guards=[],
        classes=["billing"],
        partial=None,
    )


def _triage(body: str, **options: Any) -> RunRecord:
    """A run as the lifecycle records it: system + user, one call with the run's messages."""
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Subject: help\n\n{body}"},
    ]
    request = {"model": "m", "schema": SCHEMA, "messages": messages}
    attempt = {"n": 1, "purpose": "call", "started_at": 1.0, "request": request, "response": "{}"}
    return _record(messages, [attempt], **options)


def _write(engine: Any, records: list[RunRecord], *, compact: bool = True) -> RowBatch:
    """Encode the records as the writer does (with prompt parts, or all inline as before) and
    land them in one batch."""
    redact = Redactor([SECRET])
    batch, parts = RowBatch(), Parts()
    for record in records:
        if compact:
            run, review = encode(record, redact, parts)
        else:
            run, review = run_row(record, redact), None
        batch.runs.append(run)
        batch.reviews += [review] if review is not None else []
    batch.parts = list(parts.values())
    store = RowStore(engine)
    try:
        land(store, batch, lambda _batch, why: pytest.fail(f"refused: {why}"))
    finally:
        store.close()
    return batch


# -- the round trip ------------------------------------------------------------------------

_PIECES = [
    "plain words ",
    "\x00",
    "\ud800",
    "\udfff tail",
    "😀👩‍👩‍👧",
    "e\u0301",
    "\u202eRTL\u202c",
    "\u2028\u2029",
    '"quoted" \\back\\slash ',
    '{"part": "0123456789abcdef0123456789abcdef"}',
    '{"run": 0}',
    "sk-abcdefghijklmnop1234 ",
    SECRET,
    "jane.doe@example.com +44 20 7946 0958 ",
    "\t\r\n",
    "ünïcödé ",
]


def _text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.03:
        return "x" * rng.randint(100_000, 1_000_000)  # huge
    if roll < 0.4:
        return SYSTEM  # repeated, as a template renders it
    return "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 30)))


def _message(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return {"part": "0123456789abcdef0123456789abcdef"}  # looks like a reference
    if roll < 0.08:
        return {"run": 0}
    if roll < 0.1:
        return rng.choice(["a bare string", None, 42, ["a", "list"]])
    if roll < 0.13:
        return {"content": _text(rng)}  # no role
    message: dict[str, Any] = {"role": rng.choice(["system", "user", "assistant"])}
    message["content"] = _text(rng)
    if rng.random() < 0.1:
        message["name"] = _text(rng)[:20]
    return message


def _request(rng: random.Random, messages: list[Any]) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return "not a dict"
    if roll < 0.1:
        return {"model": "m", "messages": "not a list"}
    sent: list[Any]
    shape = rng.random()
    if shape < 0.4:
        sent = messages  # the run's own list, as OpenAI-style providers send it
    elif shape < 0.6:
        sent = json.loads(json.dumps(messages))  # equal, other objects (redacted mode)
    elif shape < 0.8:
        sent = [*messages, {"role": "assistant", "content": _text(rng)}, _message(rng)]  # repair
    else:
        sent = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")]
    request: dict[str, Any] = {"model": rng.choice(["m", "gpt-4o"])}
    if rng.random() < 0.7:
        request["schema"] = {**SCHEMA, "x": _text(rng)[:50], "nan": float("nan")}
    request["messages"] = sent
    if rng.random() < 0.3:
        request["system"] = _text(rng)  # Anthropic sends the system prompt apart
    if rng.random() < 0.2:
        request["temperature"] = rng.choice([0.0, 0.7, float("inf")])
    return request


def _attempts(rng: random.Random, messages: list[Any]) -> list[Any]:
    attempts: list[Any] = []
    for n in range(1, rng.randint(0, 4) + 1):
        attempt: dict[str, Any] = {"n": n, "purpose": rng.choice(["call", "repair"])}
        attempt["started_at"] = 1.5
        if rng.random() < 0.9:
            attempt["request"] = _request(rng, messages)
        attempt["latency_ms"] = 2.0
        if rng.random() < 0.7:
            attempt["response"] = _text(rng)
        attempt["usage"] = {"input_tokens": 3}
        attempts.append(attempt)
    return attempts


def _random_record(rng: random.Random) -> RunRecord:
    messages: Any = [_message(rng) for _ in range(rng.randint(0, 5))]
    attempts = _attempts(rng, messages)
    if rng.random() < 0.05:
        messages = None
    content = rng.choice(["full", "full", "full", "redacted", "metadata"])
    return _record(messages, attempts, facts=_facts(content=content))


def _comparable(run: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in run.items() if key != "id"}


def test_a_compacted_run_reads_exactly_as_the_same_run_stored_inline(database_url, tmp_path):
    engine = _engine(database_url, tmp_path)
    rng = random.Random(20261202)
    records = [_random_record(rng) for _ in range(150)]
    twins = [dataclasses.replace(r, id=str(uuid.UUID(int=i + 1))) for i, r in enumerate(records)]
    written = _write(engine, records)
    _write(engine, twins, compact=False)
    assert written.parts and any(parts_module.is_compacted(run) for run in written.runs)
    stored = {run["id"]: run for run in runs_of(engine, "triage")}
    for record, twin in zip(records, twins, strict=True):
        assert _comparable(stored[record.id]) == _comparable(stored[twin.id]), record.id
    with engine.connect() as connection:
        raw = connection.execute(select(runs.c.messages).where(runs.c.compacted == 1)).all()
    assert len(raw) > 50
    for row in raw:  # only the last message, and small ones, are kept inline
        for item in (row.messages or [])[:-1]:
            assert "role" not in item or len(item["content"]) < parts_module.MIN_PART


def test_the_repeated_prompt_and_request_skeleton_are_stored_once(database_url, tmp_path):
    engine = _engine(database_url, tmp_path)
    _write(engine, [_triage(f"email {i}") for i in range(20)])
    _write(engine, [_triage(f"email {i}") for i in range(20, 40)])  # a later batch: no copies
    with engine.connect() as connection:
        kept = connection.execute(select(prompt_parts.c.part)).scalars().all()
        stored = connection.execute(select(runs.c.messages, runs.c.attempts)).all()
    assert sorted((json.loads(part) for part in kept), key=len) == [
        {"role": "system", "content": SYSTEM},
        {"model": "m", "schema": SCHEMA, "messages": None},
    ]
    biggest = max(len(json.dumps([m, a])) for m, a in stored)
    assert biggest < 600  # each run: references and its own user message, not 2.3 KB twice
    run = runs_of(engine, "triage")[0]
    assert run["messages"][0] == {"role": "system", "content": SYSTEM}
    request = run["attempts"][0]["request"]
    assert request == {"model": "m", "schema": SCHEMA, "messages": run["messages"]}
    assert list(request) == ["model", "schema", "messages"]  # the order it was sent in


def test_a_repair_attempt_refers_to_the_run_messages_and_keeps_its_own(tmp_path):
    record = _triage("my invoice")
    repair = [{"role": "assistant", "content": "not json"}, {"role": "user", "content": "fix"}]
    first = record.attempts[0]
    second = {**first, "n": 2, "purpose": "repair"}
    second["request"] = {**first["request"], "messages": [*record.messages, *repair]}
    record = dataclasses.replace(record, attempts=[first, second])
    engine = _engine(f"sqlite:///{tmp_path / 'log.db'}", tmp_path)
    [row] = _write(engine, [record]).runs
    stored = json.loads(row[RUN_COLUMNS.index("attempts")])
    assert stored[1]["request_ref"]["messages"] == [{"run": 0}, {"run": 1}, *repair]
    [run] = runs_of(engine, "triage")
    assert run["attempts"][1]["request"]["messages"] == [*record.messages, *repair]


# -- the spool, the quarantine, a rollback ---------------------------------------------------


def test_spooled_runs_replay_with_their_parts(database_url, tmp_path):
    """The database was down: the batch went to the spool with its parts; a replay into an
    empty database (no part of it there before) makes every run read whole."""
    redact, parts, batch = Redactor([SECRET]), Parts(), RowBatch()
    records = [_triage(f"email {i}") for i in range(5)]
    for record in records:
        batch.runs.append(encode(record, redact, parts)[0])
    batch.parts = list(parts.values())
    spool = Spool(tmp_path / "spool")
    for unit in batch.units():  # as a spool that could not take the batch whole keeps it
        assert {part[0] for part in unit.parts} == set(parts)  # each run with both its parts
        spool.append(unit)
    spool.close()
    engine = _engine(database_url, tmp_path)
    store = RowStore(engine)
    replayed = Spool(tmp_path / "spool").replay(lambda b: land(store, b, pytest.fail))
    store.close()
    assert replayed == 5
    for record in records:
        run = get_run(engine, record.id)
        assert run["messages"] == record.messages
        assert run["attempts"][0]["request"]["schema"] == SCHEMA


def test_a_rollback_mid_batch_leaves_no_run_without_its_parts(database_url, tmp_path):
    """The first transaction writes the parts, then the database refuses one run and rolls it
    all back; the runs written by the retries carry their parts again, and the refused one is
    set aside whole."""
    engine = _engine(database_url, tmp_path)
    redact, parts, batch = Redactor([SECRET]), Parts(), RowBatch()
    records = [_triage(f"email {i}") for i in range(4)]
    for record in records:
        batch.runs.append(encode(record, redact, parts)[0])
    batch.parts = list(parts.values())
    broken = list(batch.runs[2])
    broken[RUN_COLUMNS.index("status")] = None  # NOT NULL: the database refuses this run
    batch.runs[2] = tuple(broken)
    quarantine = Quarantine(tmp_path / "quarantine")
    store = RowStore(engine)
    written = land(store, batch, quarantine.add)
    store.close()
    quarantine.close()
    assert written == 3
    sent = {record.id: record for record in records}
    for run in runs_of(engine, "triage"):
        assert run["messages"] == sent[run["id"]].messages
        assert run["attempts"] == sent[run["id"]].attempts
    [entry] = list(Quarantine(tmp_path / "quarantine").entries())
    kept = entry.run() or {}
    assert kept["compacted"] is None and json.loads(kept["messages"]) == records[2].messages
    assert json.loads(kept["attempts"])[0]["request"]["schema"] == SCHEMA


def test_a_part_deleted_behind_the_writers_back_comes_back_with_the_next_batch(tmp_path):
    """No memory of parts already written is trusted: each batch writes the parts it needs.
    (A run whose part is gone, which only a hand-made deletion can cause, still reads, and says
    what is missing.)"""
    engine = _engine(f"sqlite:///{tmp_path / 'log.db'}", tmp_path)
    first = _triage("first")
    _write(engine, [first])
    with engine.begin() as connection:
        connection.execute(prompt_parts.delete())
    [system, user] = get_run(engine, first.id)["messages"]
    assert system["role"] == "(missing)" and user == first.messages[1]
    later = _triage("second")
    _write(engine, [later])
    assert get_run(engine, later.id)["messages"] == later.messages


# -- old rows, the readers -------------------------------------------------------------------


def test_runs_written_before_prompt_parts_read_unchanged(database_url, tmp_path):
    """A log at 0009 with a run in it (whose messages even look like references) is upgraded;
    the run reads as it was written."""
    engine = get_engine(normalise_url(database_url, tmp_path))
    upgrade(engine, "0009")
    record = _record(
        [{"part": "0123456789abcdef0123456789abcdef"}, {"role": "user", "content": "hi"}],
        [{"n": 1, "request_ref": {"part": "x"}, "request": {"messages": [{"run": 0}]}}],
    )
    row = dict(zip(RUN_COLUMNS, run_row(record, Redactor()), strict=False))
    row.pop("compacted")
    for column in ("started_at", "finished_at"):
        row[column] = datetime.fromtimestamp(row[column], timezone.utc)
    for column in ("inputs", "messages", "output", "attempts"):
        row[column] = json.loads(row[column])
    with engine.begin() as connection:
        connection.execute(runs.insert().values(**{k: v for k, v in row.items() if v is not None}))
    upgrade(engine)
    run = get_run(engine, record.id)
    assert run["messages"] == record.messages and run["attempts"] == record.attempts
    assert "compacted" not in run


def test_show_json_and_the_review_item_have_the_whole_messages(
    project, emulator, capsys, database_url, monkeypatch
):
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    emulator.script(ok(GOOD))
    code, out, _ = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    assert code == 0
    code, out, _ = smallops(capsys, "-p", str(project), "logs", "--json")
    [listed] = [json.loads(line) for line in out.splitlines()]
    code, out, _ = smallops(capsys, "-p", str(project), "show", listed["id"], "--json")
    record = json.loads(out)
    sent = emulator.requests[0].body
    system, _user = record["messages"]
    assert system["role"] == "system" and len(system["content"]) > 500
    assert record["messages"] == sent["messages"]
    request = record["attempts"][0]["request"]
    assert request["messages"] == sent["messages"]
    assert request["response_format"] == sent["response_format"]
    assert "compacted" not in record
    engine = get_engine(normalise_url(database_url, project))
    with engine.connect() as connection:
        stored = connection.execute(select(runs.c.messages, runs.c.compacted)).one()
        count = connection.scalar(select(func.count()).select_from(prompt_parts))
    assert stored.compacted == 1 and count == 2
    assert system["content"] not in json.dumps(stored.messages)
    from smallops.review.queue import ReviewQueue

    item = ReviewQueue(engine).item(listed["id"])
    assert item["messages"] == sent["messages"]


# -- retention -------------------------------------------------------------------------------


@contextlib.contextmanager
def _writing_at(moment: datetime) -> Iterator[None]:
    """The writer stamps its part rows as if it wrote at `moment`."""
    real = store_module.time
    store_module.time = SimpleNamespace(time=moment.timestamp)  # type: ignore[assignment]
    try:
        yield
    finally:
        store_module.time = real


def _versions(engine: Any, workflow: str) -> set[str]:
    """The prompt versions that have parts in the log."""
    query = select(prompt_parts.c.prompt_version).where(prompt_parts.c.workflow == workflow)
    with engine.connect() as connection:
        return set(connection.scalars(query))


def test_prune_deletes_the_parts_no_kept_run_uses(database_url, tmp_path):
    engine = _engine(database_url, tmp_path)
    now = datetime.now(timezone.utc)
    old, recent = now - timedelta(days=10), now - timedelta(days=1)
    v1, v2 = _facts(version="v1"), _facts(version="v2")
    other = _facts(workflow="other", version="v1")

    def triage(moment: datetime, facts: WorkflowFacts, body: str, **options: Any) -> RunRecord:
        return _triage(body, facts=facts, started_at=moment.timestamp(), **options)

    gone = [triage(old, v1, f"old {i}") for i in range(3)]
    waiting = triage(old, v2, "waits for a reviewer", route="required")
    elsewhere = triage(old, other, "another workflow")
    kept = triage(recent, v1, "recent")
    with _writing_at(old):
        _write(engine, [*gone, waiting, elsewhere])
    with _writing_at(recent):
        _write(engine, [kept])

    assert _versions(engine, "triage") == {"v1", "v2"}
    assert retention.prune(engine, "triage", now - timedelta(days=5)) == 3
    # v1's parts are used by the recent run; v2's by the run a reviewer still has to see.
    assert _versions(engine, "triage") == {"v1", "v2"}
    assert get_run(engine, kept.id)["messages"] == kept.messages
    assert get_run(engine, waiting.id)["messages"] == waiting.messages
    pruned = get_run(engine, gone[0].id)
    assert pruned["messages"] is None and "request" not in pruned["attempts"][0]
    with engine.connect() as connection:
        left = connection.execute(select(runs.c.attempts).where(runs.c.compacted.is_(None))).all()
    assert all("request_ref" not in json.dumps(row.attempts) for row in left)
    # The reviewer decides; the next prune takes that run and v2's parts. v1's parts stay
    # until the recent run is old too.
    with engine.begin() as connection:
        connection.execute(update(review_items).values(state="approved"))
    assert retention.prune(engine, "triage", now - timedelta(days=5)) == 1
    assert _versions(engine, "triage") == {"v1"}
    assert retention.prune(engine, "triage", now) == 1
    assert _versions(engine, "triage") == set()
    assert _versions(engine, "other") == {"v1"}  # its own retention, its own parts


def test_a_run_written_while_the_prune_runs_keeps_its_parts(database_url, tmp_path):
    """An old run replayed from a spool after the prune passed its place is not pruned, and
    its parts, used by no other run, stay: its write moved their last_used on."""
    engine = _engine(database_url, tmp_path)
    now = datetime.now(timezone.utc)
    old = now - timedelta(days=10)
    with _writing_at(old):
        _write(engine, [_triage(f"old {i}", started_at=old.timestamp()) for i in range(3)])
    facts = _facts(version="v9")  # parts of its own
    late = _triage(
        "replayed", facts=facts, started_at=old.timestamp(), run_id=str(uuid.UUID(int=1))
    )
    written: list[int] = []

    def progress(_: int) -> None:
        if not written:
            written.append(len(_write(engine, [late]).runs))

    assert retention.prune(engine, "triage", now - timedelta(days=5), progress) == 3
    assert written == [1]
    assert get_run(engine, late.id)["messages"] == late.messages
    assert _versions(engine, "triage") == {"v9"}  # the pruned runs' parts are gone
