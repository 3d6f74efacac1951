"""Rollups (storage/rollups.py): written with the runs, they add up to what the runs add up to,
whatever the order, replays, late records, refused rows and eval traffic; quantiles from their
histogram are within the bucket error of the exact ones. On SQLite and Postgres.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from smallops.ids import uuid7
from smallops.storage import rollup_reads, rollups
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.queries import report
from smallops.storage.schema import RUN_COLUMNS, run_rollups, runs
from smallops.storage.store import RowBatch, RowStore, land

from conftest import smallops

WORKFLOWS = ("triage", "refunds", "summaries")
ORIGINS = (None, "app", "fallback", "eval")
STATUSES = {
    "auto": None,
    "pending_review": None,
    "fallback_review": "server_error",
    "fallback_secondary": "rate_limited",
    "failed": "bad_request",
}
MODELS = ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-09-01", None)
HOUR = 3600.0


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Engine:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return engine


def random_run(rng: random.Random, now: float) -> tuple[Any, ...]:
    """A `runs` row as the log writer gets it (RUN_COLUMNS order, epoch-second times)."""
    status = rng.choice(list(STATUSES))
    served = rng.choice(MODELS)
    latency = 0.0 if rng.random() < 0.03 else rng.lognormvariate(6, 1.2)
    started = now - rng.uniform(0, 5 * 24 * HOUR)
    values: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    values.update(
        id=uuid7(),
        workflow=rng.choice(WORKFLOWS),
        prompt_version=rng.choice(("a1b2c3", "d4e5f6")),
        provider="openai",
        model_requested=MODELS[0],
        model_served=served,
        model_mismatch=served is not None and served != MODELS[0],
        allow_unpinned=False,
        status=status,
        error_type=STATUSES[status],
        review_policy="none",
        origin=rng.choice(ORIGINS),
        fallback="review",
        attempt_count=1,
        input_tokens=rng.randint(0, 5000),
        output_tokens=rng.randint(0, 800),
        cached_tokens=rng.randint(0, 1000),
        reasoning_tokens=0,
        cost_usd=None if rng.random() < 0.2 else rng.uniform(0, 0.01),
        cost_source="table",
        latency_ms=latency,
        started_at=started,
        finished_at=started + latency / 1000,
        inputs="{}",
        attempts="[]",
    )
    return tuple(values[name] for name in RUN_COLUMNS)


def write_randomly(engine: Engine, rng: random.Random, n: int) -> list[str]:
    """Write `n` random runs through the writer's store in random batches, with replays of
    whole batches, runs repeated inside a batch and from earlier batches, late runs (started
    hours before runs already written) and a row the database refuses. Returns the refused ids.
    """
    store = RowStore(engine)
    now = time.time()
    made = sorted((random_run(rng, now) for _ in range(n)), key=lambda row: row[0])
    made.sort(key=lambda row: row[RUN_COLUMNS.index("started_at")] if rng.random() < 0.7 else 0)
    refused: list[str] = []
    written: list[tuple[Any, ...]] = []
    start = 0
    while start < len(made):
        size = rng.randint(1, 60)
        batch = list(made[start : start + size])
        start += size
        if written and rng.random() < 0.3:  # a replay of runs already logged
            batch += rng.sample(written, min(len(written), rng.randint(1, 10)))
        if batch and rng.random() < 0.2:  # the same run twice in one batch
            batch.append(rng.choice(batch))
        if rng.random() < 0.1:  # a record the database refuses: NOT NULL status
            bad = list(random_run(rng, now))
            bad[RUN_COLUMNS.index("status")] = None
            batch.insert(rng.randrange(len(batch) + 1), tuple(bad))
            refused.append(bad[0])
        rng.shuffle(batch)
        land(store, RowBatch(runs=batch), lambda _batch, _why: None)
        if rng.random() < 0.2:  # the whole batch again, as after an uncertain commit
            land(store, RowBatch(runs=batch), lambda _batch, _why: None)
        written += [row for row in batch if row[0] not in refused]
    store.close()
    return refused


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def expected_rollups(engine: Engine) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rollups computed from the runs table, the plain way."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    with engine.connect() as connection:
        for run in connection.execute(select(runs)):
            started = _utc(run.started_at)
            key = (
                started.replace(minute=0, second=0, microsecond=0),
                run.workflow,
                run.origin or "",
                run.status,
                run.error_type or "",
                run.model_requested,
                run.model_served or "",
                run.prompt_version,
            )
            row = out.setdefault(
                key,
                {
                    "calls": 0,
                    "priced_calls": 0,
                    "cost_usd": 0.0,
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "cached_tokens": 0,
                    "model_mismatches": 0,
                    "latencies": [],
                },
            )
            row["calls"] += 1
            if run.cost_usd is not None:
                row["priced_calls"] += 1
                row["cost_usd"] += run.cost_usd
            row["input_tokens"] += run.input_tokens
            row["output_tokens"] += run.output_tokens
            row["cached_tokens"] += run.cached_tokens
            row["model_mismatches"] += int(run.model_mismatch)
            row["latencies"].append(run.latency_ms)
    return out


def stored_rollups(engine: Engine) -> dict[tuple[Any, ...], Any]:
    with engine.connect() as connection:
        rows = connection.execute(select(run_rollups)).all()
    return {
        (_utc(row.hour), *(getattr(row, name) for name in rollups.KEY_COLUMNS[1:])): row
        for row in rows
    }


def assert_rollups_match_runs(engine: Engine) -> None:
    expected, stored = expected_rollups(engine), stored_rollups(engine)
    assert set(stored) == set(expected)
    for key, want in expected.items():
        got = stored[key]
        for name in ("calls", "priced_calls", "input_tokens", "output_tokens", "cached_tokens"):
            assert getattr(got, name) == want[name], (key, name)
        assert got.model_mismatches == want["model_mismatches"]
        assert got.cost_usd == pytest.approx(want["cost_usd"], rel=1e-9, abs=1e-12)
        latencies = want["latencies"]
        assert got.latency_sum_ms == pytest.approx(sum(latencies), rel=1e-9)
        assert got.latency_min_ms == min(latencies) and got.latency_max_ms == max(latencies)
        histogram = {int(b): n for b, n in _json(got.latency_histogram).items()}
        assert histogram == Counter(rollups.bucket_of(ms) for ms in latencies)


def _json(value: Any) -> dict[str, int]:
    return json.loads(value) if isinstance(value, str) else dict(value)


def exact_report(engine: Engine, since: datetime) -> dict[str, dict[str, Any]]:
    """What `report` said when it read every run (before the rollups), production only."""
    groups: dict[str, list[Any]] = defaultdict(list)
    with engine.connect() as connection:
        for run in connection.execute(select(runs).where(runs.c.started_at >= since)):
            if run.origin != "eval":
                groups[run.workflow].append(run)
    out = {}
    for name, rows in groups.items():
        priced = [row.cost_usd for row in rows if row.cost_usd is not None]
        primary = [row for row in rows if row.origin != "fallback"]
        fallback = [row for row in rows if row.origin == "fallback"]
        out[name] = {
            "calls": len(rows),
            "statuses": dict(Counter(row.status for row in rows)),
            "errors": dict(Counter(row.error_type for row in rows if row.error_type)),
            "input_tokens": sum(row.input_tokens for row in rows),
            "output_tokens": sum(row.output_tokens for row in rows),
            "cached_tokens": sum(row.cached_tokens for row in rows),
            "cost_usd": round(sum(priced), 6) if priced else None,
            "unpriced_calls": len(rows) - len(priced),
            "latencies": sorted(row.latency_ms for row in rows),
            "models_served": dict(Counter(r.model_served for r in primary if r.model_served)),
            "model_mismatches": sum(1 for row in primary if row.model_mismatch),
            "fallback": {
                "calls": len(fallback),
                "models_served": dict(Counter(r.model_served for r in fallback if r.model_served)),
            },
        }
    return out


def exact_percentile(ordered: list[float], pct: int) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[pct - 1]


def within_bucket_error(estimate: float | None, exact: float) -> bool:
    """Relative bucket error, plus the report's rounding to 0.01 ms."""
    assert estimate is not None
    return abs(estimate - exact) <= rollups.QUANTILE_ERROR * exact + 0.006


def assert_report_matches_runs(engine: Engine, since: datetime) -> None:
    exact = exact_report(engine, since)
    got = {row["workflow"]: row for row in report(engine, since=since)}
    assert set(got) == set(exact)
    for name, want in exact.items():
        row = got[name]
        latencies = want.pop("latencies")
        for pct in (50, 95):
            assert within_bucket_error(row[f"latency_p{pct}_ms"], exact_percentile(latencies, pct))
        cost = row.pop("cost_usd")
        assert (cost is None) == (want["cost_usd"] is None)
        if cost is not None:
            assert cost == pytest.approx(want.pop("cost_usd"), abs=2e-6)
        assert {k: v for k, v in row.items() if k in want} == {
            k: v for k, v in want.items() if k != "cost_usd"
        }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_written_with_the_runs_equal_the_runs_aggregated(engine, seed):
    rng = random.Random(seed)
    refused = write_randomly(engine, rng, 400)
    with engine.connect() as connection:
        assert not connection.execute(select(runs.c.id).where(runs.c.id.in_(refused))).all()
    assert_rollups_match_runs(engine)
    now = datetime.now(timezone.utc)
    for since in (now - timedelta(days=30), now - timedelta(days=2, minutes=17), now):
        assert_report_matches_runs(engine, since)
    for workflow in WORKFLOWS:
        assert_served_models_match_runs(engine, workflow)


def assert_served_models_match_runs(engine: Engine, workflow: str) -> None:
    """The model changes `report` shows: from the rollups and the runs of two hours, the same
    as from every run."""
    seen: dict[str, list[Any]] = {}
    with engine.connect() as connection:
        for run in connection.execute(select(runs).where(runs.c.workflow == workflow)):
            if run.model_served and run.origin in (None, "app"):
                seen.setdefault(run.model_served, []).append(_utc(run.started_at))
        got = rollup_reads.served_models(connection, workflow)
    want = sorted(
        (
            {"model": m, "first_seen": min(t), "last_seen": max(t), "calls": len(t)}
            for m, t in seen.items()
        ),
        key=lambda row: row["first_seen"],
    )
    assert got == want


def test_rebuild_gives_the_rollups_the_writer_keeps(engine):
    write_randomly(engine, random.Random(7), 300)
    kept = {key: tuple(row) for key, row in stored_rollups(engine).items()}
    with engine.begin() as connection:  # rollups gone wrong, e.g. runs imported by hand
        connection.execute(run_rollups.delete().where(run_rollups.c.workflow == "triage"))
    seen: list[int] = []
    done = rollups.rebuild(engine, seen.append)
    with engine.connect() as connection:
        assert done.runs == sum(seen) == len(connection.execute(select(runs.c.id)).all())
    assert done.rollup_rows == len(kept)
    assert_rollups_match_runs(engine)
    rebuilt = stored_rollups(engine)
    assert set(rebuilt) == set(kept)


def test_a_refused_batch_leaves_the_rollups_untouched(engine):
    rng = random.Random(11)
    store = RowStore(engine)
    good = [random_run(rng, time.time()) for _ in range(5)]
    bad = list(random_run(rng, time.time()))
    bad[RUN_COLUMNS.index("workflow")] = None
    with pytest.raises(Exception):  # noqa: B017 - whichever error the driver raises
        store.write([*good, tuple(bad)])
    store.close()
    with engine.connect() as connection:
        assert not connection.execute(select(run_rollups)).all()
        assert not connection.execute(select(runs)).all()


def test_a_run_stored_in_the_next_hour_is_rolled_up_in_that_hour(engine):
    """A start a fraction of a microsecond before the hour is stored rounded up to the hour
    (timestamps keep microseconds): its rollup goes where the stored run is."""
    hour = (time.time() // HOUR - 2) * HOUR
    rng = random.Random(13)
    rows = []
    for started in (hour - 4e-7, hour - 2e-6, hour):
        row = list(random_run(rng, time.time()))
        row[RUN_COLUMNS.index("started_at")] = started
        row[RUN_COLUMNS.index("finished_at")] = started + 1
        rows.append(tuple(row))
    store = RowStore(engine)
    store.write(rows)
    store.close()
    assert_rollups_match_runs(engine)


def test_a_since_in_another_time_zone_reports_the_same_runs(engine):
    """`report --since 2026-12-01T03:30+02:00`: the part hour is read from the runs too."""
    write_randomly(engine, random.Random(17), 300)
    since = datetime.now(timezone.utc) - timedelta(days=2, minutes=30)
    in_utc = report(engine, since=since)
    assert in_utc and report(engine, since=since.astimezone(timezone(timedelta(hours=2)))) == in_utc
    assert report(engine, since=since.astimezone(timezone(timedelta(hours=-7)))) == in_utc


@pytest.mark.parametrize("seed", range(20))
def test_quantiles_from_the_histogram_are_within_the_bucket_error(seed):
    rng = random.Random(seed)
    latencies = sorted(
        rng.lognormvariate(rng.uniform(0, 8), 1.5) for _ in range(rng.randint(1, 500))
    )
    histogram = Counter(rollups.bucket_of(ms) for ms in latencies)
    for pct in (1, 50, 95, 99, 100):
        estimate = rollups.quantile(histogram, pct, latencies[0], latencies[-1])
        exact = exact_percentile(latencies, pct) if pct < 100 else latencies[-1]
        assert estimate is not None and abs(estimate - exact) <= rollups.QUANTILE_ERROR * exact


def test_the_bucket_error_is_a_few_percent():
    assert 0.04 < rollups.QUANTILE_ERROR < 0.045
    for ms in (0.3, 1.0, 17.5, 950.0, 123_456.0):
        assert abs(rollups.bucket_value(rollups.bucket_of(ms)) / ms - 1) <= rollups.QUANTILE_ERROR
    assert rollups.bucket_value(rollups.bucket_of(0.0)) == 0.0
    assert rollups.quantile({}, 50) is None
    assert math.isfinite(rollups.bucket_value(rollups.bucket_of(math.inf)))


def test_rebuild_rollups_command(project, capsys, database_url, monkeypatch):
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    engine = get_engine(normalise_url(database_url, project))
    ensure_schema(engine)
    write_randomly(engine, random.Random(5), 50)
    with engine.begin() as connection:
        connection.execute(run_rollups.delete())
    code, out, _ = smallops(capsys, "-p", str(project), "db", "rebuild-rollups", "--json")
    result = json.loads(out)
    assert code == 0 and result["runs"] > 0 and result["rollup_rows"] > 0
    assert_rollups_match_runs(engine)
    code, out, _ = smallops(capsys, "-p", str(project), "db", "rebuild-rollups")
    assert code == 0 and f"rollups rebuilt from {result['runs']:,} runs" in out


def test_rebuild_rollups_on_an_unreachable_database_is_one_line(project, capsys, monkeypatch):
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    code, _, err = smallops(capsys, "-p", str(project), "db", "rebuild-rollups")
    assert code == 1 and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error")]) == 1


def _log_at_0006_with_runs(engine: Engine, n: int) -> None:
    from smallops.storage.db import upgrade

    upgrade(engine, "0006")
    rng = random.Random(3)
    rows = [random_run(rng, time.time()) for _ in range(n)]
    with engine.begin() as connection:
        for row in rows:
            values = dict(zip(RUN_COLUMNS, row, strict=True))
            for name in ("started_at", "finished_at"):
                values[name] = datetime.fromtimestamp(values[name], timezone.utc)
            values["inputs"], values["attempts"] = {}, []
            del values["compacted"]  # added by 0010
            del values["trace_parent"]  # added by 0012
            del values["caller"]  # added by 0013
            connection.execute(runs.insert().values(**values))


def test_upgrading_a_log_from_before_the_rollups_fills_them(tmp_path):
    engine = get_engine(f"sqlite:///{tmp_path / 'old.db'}")
    from smallops.storage.db import upgrade

    _log_at_0006_with_runs(engine, 40)
    upgrade(engine)
    assert_rollups_match_runs(engine)


def test_an_upgrade_whose_rollups_rebuild_fails_can_be_run_again(
    database_url, tmp_path, monkeypatch
):
    """The rebuild failing (the database gone, Ctrl-C) leaves the log as it was before the
    upgrade, not migrated with its rollups missing for good."""
    engine = get_engine(normalise_url(database_url, tmp_path))
    from smallops.storage.db import current_revision, head_revision, upgrade

    _log_at_0006_with_runs(engine, 40)

    def gone(*_args: Any) -> None:
        raise ConnectionError("the database went away")

    with monkeypatch.context() as patched:
        patched.setattr(rollups, "merge", gone)
        with pytest.raises(ConnectionError):
            upgrade(engine)
    assert current_revision(engine) == "0006"
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert_rollups_match_runs(engine)
