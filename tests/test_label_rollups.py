"""Label rollups (storage/label_rollups.py): written with the runs, they count what the runs'
outputs say, whatever the order, replays, late and refused rows, eval and fallback traffic and
hostile values; a rebuild gives the same; the drift check reads them. On SQLite and Postgres.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from smallops.evals.shifts import distribution_shifts
from smallops.storage import label_rollups, rollups
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.hours import epoch, hour_of
from smallops.storage.schema import PROMPT_COLUMNS, RUN_COLUMNS, runs
from smallops.storage.schema import label_rollups as table
from smallops.storage.storable import clean, json_text
from smallops.storage.store import RowBatch, RowStore, land
from test_rollups import random_run

CATEGORIES = ["billing", "support", "spam", "café ☕", "a\x00b", "\ud800"]
SCHEMAS = {  # prompt version: output schema
    "v1": {
        "properties": {
            "category": {"enum": CATEGORIES},
            "urgency": {"anyOf": [{"enum": ["low", "high"]}, {"type": "null"}]},
            "summary": {"type": "string"},
        }
    },
    "v2": {
        "properties": {
            "category": {"enum": CATEGORIES},
            "n": {"enum": [1, 2, 3]},
        }
    },
    "v3": {"properties": {"summary": {"type": "string"}}},  # no label field
}


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Engine:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return engine


def prompt_row(version: str) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "id": version,
        "workflow": "triage",
        "template": "[user]\n{{ x }}",
        "output_schema": json_text(SCHEMAS[version], set()),
        "model": "m",
        "params": "{}",
        "created_at": time.time(),
    }
    return tuple(values[name] for name in PROMPT_COLUMNS)


def random_output(rng: random.Random) -> Any:
    shape = rng.random()
    if shape < 0.05:
        return None
    if shape < 0.1:
        return rng.choice(["just text", [1, 2], 7])  # not an object: nothing counted
    output: dict[str, Any] = {"summary": "x" * rng.randint(0, 300)}
    if rng.random() < 0.9:
        output["category"] = rng.choice(CATEGORIES)
    if rng.random() < 0.5:
        output["urgency"] = rng.choice(["low", "high", None, "x" * 250])  # too long: not counted
    if rng.random() < 0.5:
        output["n"] = rng.choice([1, 2, 3])
    return output


def labelled_run(rng: random.Random, now: float) -> tuple[Any, ...]:
    values = dict(zip(RUN_COLUMNS, random_run(rng, now), strict=True))
    values["prompt_version"] = rng.choice(list(SCHEMAS))
    output = random_output(rng)
    values["output"] = json_text(output, set())  # as the writer gets it: storable
    return tuple(values[name] for name in RUN_COLUMNS)


def write_randomly(engine: Engine, rng: random.Random, n: int) -> None:
    """Random runs in random batches through the writer's store, with replays, repeats inside a
    batch, late runs and refused rows (as test_rollups does for the run rollups)."""
    store = RowStore(engine)
    now = time.time()
    made = [labelled_run(rng, now) for _ in range(n)]
    written: list[tuple[Any, ...]] = []
    prompts = [prompt_row(version) for version in SCHEMAS]
    start = 0
    while start < len(made):
        size = rng.randint(1, 40)
        batch = list(made[start : start + size])
        start += size
        if written and rng.random() < 0.3:
            batch += rng.sample(written, min(len(written), rng.randint(1, 8)))
        if rng.random() < 0.2:
            batch.append(rng.choice(batch))
        if rng.random() < 0.1:  # refused: NOT NULL status
            bad = list(labelled_run(rng, now))
            bad[RUN_COLUMNS.index("status")] = None
            batch.append(tuple(bad))
        rng.shuffle(batch)
        land(store, RowBatch(runs=batch, prompts=prompts), lambda _batch, _why: None)
        if rng.random() < 0.2:
            land(store, RowBatch(runs=batch), lambda _batch, _why: None)
        prompts = []
        written += [row for row in batch if row[RUN_COLUMNS.index("status")] is not None]
    store.close()


def expected_counts(engine: Engine) -> Counter[tuple[Any, ...]]:
    """The label counts computed from the stored runs, by a route independent of the writer's."""
    r = runs.c
    out: Counter[tuple[Any, ...]] = Counter()
    with engine.connect() as connection:
        rows = connection.execute(
            select(r.started_at, r.workflow, r.prompt_version, r.origin, r.output)
        ).all()
    for started, workflow, version, origin, output in rows:
        if origin not in (None, "app") or not isinstance(output, dict):
            continue
        wanted = {"v1": ("category", "urgency"), "v2": ("category", "n")}.get(version, ())
        for name in wanted:
            if name in output and len(json.dumps(output[name])) <= label_rollups.VALUE_LIMIT:
                hour = datetime.fromtimestamp(hour_of(epoch(started)), timezone.utc)
                out[(hour, workflow, version, name, json.dumps(output[name]))] += 1
    return out


def stored_counts(engine: Engine) -> Counter[tuple[Any, ...]]:
    out: Counter[tuple[Any, ...]] = Counter()
    with engine.connect() as connection:
        for row in connection.execute(select(table)):
            hour = row.hour if row.hour.tzinfo else row.hour.replace(tzinfo=timezone.utc)
            value = json.dumps(json.loads(row.value))
            out[(hour, row.workflow, row.prompt_version, row.field, value)] += row.calls
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_label_rollups_written_with_the_runs_equal_the_runs_counted(engine, seed):
    write_randomly(engine, random.Random(seed), 300)
    expected = expected_counts(engine)
    assert expected and stored_counts(engine) == expected


def test_a_field_name_no_database_stores_is_not_counted():
    schema = {"properties": {name: {"enum": ["x"]} for name in ("a\x00b", "\ud800", "x" * 101)}}
    assert label_rollups.fields_of(schema) == ()
    assert label_rollups.fields_of({"properties": {"ok": {"const": 1}}}) == ("ok",)
    assert label_rollups.fields_of("not json") == () == label_rollups.fields_of("[1]")


def test_rebuild_gives_the_label_rollups_the_writer_keeps(engine):
    write_randomly(engine, random.Random(5), 200)
    kept = stored_counts(engine)
    with engine.begin() as connection:
        connection.execute(table.delete().where(table.c.field == "category"))
    done = rollups.rebuild(engine)
    assert done.label_rows == len(kept) and stored_counts(engine) == kept


def test_a_refused_batch_adds_no_label_counts(engine):
    rng = random.Random(9)
    store = RowStore(engine)
    good = [labelled_run(rng, time.time()) for _ in range(5)]
    bad = list(labelled_run(rng, time.time()))
    bad[RUN_COLUMNS.index("workflow")] = None
    with pytest.raises(Exception):  # noqa: B017 - whichever error the driver raises
        store.write([*good, tuple(bad)], [prompt_row(v) for v in SCHEMAS])
    store.close()
    with engine.connect() as connection:
        assert not connection.execute(select(table)).all()


def test_hostile_values_are_counted_and_read_back_as_they_were(engine):
    """A value with NUL or a lone surrogate (made storable, as every output is) and non-ASCII
    text are stored (as ASCII JSON) and read back equal; 1, 1.0 and true are one value once
    read."""
    store = RowStore(engine)
    rng = random.Random(1)
    now = time.time()
    rows = []
    for category, n in [("a\x00b", 1), ("\ud800", 1.0), ("café ☕", True), ("a\x00b", 2)]:
        values = dict(zip(RUN_COLUMNS, labelled_run(rng, now), strict=True))
        values.update(workflow="triage", prompt_version="v2", origin="app", started_at=now - 60)
        values["output"] = json_text({"category": category, "n": n}, set())
        rows.append(tuple(values[name] for name in RUN_COLUMNS))
    land(store, RowBatch(runs=rows, prompts=[prompt_row("v2")]), lambda _b, _w: None)
    store.close()
    end = datetime.now(timezone.utc) + timedelta(hours=1)
    counts = label_rollups.value_counts(
        engine,
        "triage",
        ["category", "n"],
        since=end - timedelta(days=14),
        split=end - timedelta(days=7),
        until=end,
    )
    nul, surrogate = (clean(value, set()) for value in ("a\x00b", "\ud800"))
    assert counts["category"][0] == {nul: 2, surrogate: 1, "café ☕": 1}
    assert counts["n"][0] == {1: 3, 2: 1}
    assert counts["category"][1] == {}


def test_the_drift_check_reads_the_label_rollups(engine):
    """This week's and last week's counts, and the test on them, come from the label rollups."""
    store = RowStore(engine)
    rng = random.Random(2)
    now = time.time()
    rows = []
    for i in range(60):
        values = dict(zip(RUN_COLUMNS, labelled_run(rng, now), strict=True))
        last_week = i < 30
        category = "billing" if last_week or i % 4 == 0 else "spam"
        values.update(workflow="triage", prompt_version="v1", origin="app", started_at=now - 60)
        values["output"] = json_text({"category": category}, set())
        if last_week:
            values["started_at"] = now - 8 * 86400
        rows.append(tuple(values[name] for name in RUN_COLUMNS))
    land(store, RowBatch(runs=rows, prompts=[prompt_row("v1")]), lambda _b, _w: None)
    store.close()
    [shift] = [s for s in distribution_shifts(engine, "triage") if s["field"] == "category"]
    assert shift["last_week"] == {"billing": 30}
    assert shift["this_week"] == {"billing": 7, "spam": 23}
    assert shift["shifted"]


def _count_now(engine: Engine, field: str, outputs: list[Any]) -> dict[Any, int]:
    """`outputs` written as this hour's runs of a version whose schema makes `field` a label."""
    schema = {"properties": {field: {"enum": ["a", "b"]}}}
    prompt = dict(zip(PROMPT_COLUMNS, prompt_row("v1"), strict=True))
    # a version id is a hash of the version: another schema, another id
    version = hashlib.sha256(field.encode()).hexdigest()[:16]
    prompt.update(id=version, output_schema=json_text(schema, set()))
    rng, now, rows = random.Random(4), time.time(), []
    for output in outputs:
        values = dict(zip(RUN_COLUMNS, labelled_run(rng, now), strict=True))
        values.update(workflow="triage", prompt_version=version, origin=None, started_at=now - 1)
        values["output"] = json_text(output, set())
        rows.append(tuple(values[name] for name in RUN_COLUMNS))
    store = RowStore(engine)
    land(store, RowBatch(runs=rows, prompts=[tuple(prompt.values())]), lambda _b, _w: None)
    store.close()
    end = datetime.now(timezone.utc) + timedelta(hours=1)
    since, split = end - timedelta(days=14), end - timedelta(days=7)
    return label_rollups.value_counts(
        engine, "triage", [field], since=since, split=split, until=end
    )[field][0]


@pytest.mark.parametrize("field", ["catégorie", 'say "hi"', "back\\slash"])
def test_a_field_whose_name_needs_escaping_is_counted(engine, field):
    assert _count_now(engine, field, [{field: "a"}, {field: "a"}, {field: "b"}]) == {"a": 2, "b": 1}


def test_an_object_or_a_list_in_a_label_field_is_counted_by_its_json(engine):
    """An output that does not match its schema (edited, or an older version's shape)."""
    outputs: list[Any] = [{"n": {"b": 1, "a": [2]}}, {"n": {"a": [2], "b": 1}}, {"n": [1]}, "x"]
    assert _count_now(engine, "n", outputs) == {'{"a": [2], "b": 1}': 2, "[1]": 1}


def test_upgrading_a_log_from_before_the_label_rollups_fills_them(tmp_path):
    from smallops.storage.db import upgrade
    from smallops.storage.schema import prompt_versions

    engine = get_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0008")
    rng = random.Random(6)
    with engine.begin() as connection:
        for version in SCHEMAS:
            values = dict(zip(PROMPT_COLUMNS, prompt_row(version), strict=True))
            values["created_at"] = datetime.now(timezone.utc)
            values["output_schema"] = SCHEMAS[version]
            connection.execute(prompt_versions.insert().values(**values))
        for _ in range(60):
            values = dict(zip(RUN_COLUMNS, labelled_run(rng, time.time()), strict=True))
            for name in ("started_at", "finished_at"):
                values[name] = datetime.fromtimestamp(values[name], timezone.utc)
            values["inputs"], values["attempts"] = {}, []
            values.pop("compacted", None)  # a column of a later revision (0010)
            values.pop("trace_parent", None)  # and 0012
            values.pop("caller", None)  # and 0013
            if values["output"] is not None:
                values["output"] = json.loads(values["output"])
            connection.execute(runs.insert().values(**values))
    upgrade(engine)
    expected = expected_counts(engine)
    assert expected and stored_counts(engine) == expected
