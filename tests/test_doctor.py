"""`smallops doctor`: the playbook's practices judged on real projects (the demo, a fresh
`init`, a fully configured one) and their logs (SQLite and Postgres), the exit code per tier,
--json, an unreachable database, and the CI files, review policies and key sources it reads."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from smallops import FakeProvider, Settings, Workflow
from smallops.doctor import Subject, examine, judge
from smallops.doctor.ci import scan_ci
from smallops.doctor.facts import read_log
from smallops.doctor.practices import PRACTICE_IDS, PRACTICES, Scorecard
from smallops.evals.dataset import workflow_cases
from smallops.evals.gate import prepare_eval, run_gate
from smallops.evals.runner import run_eval
from smallops.ids import uuid7
from smallops.project import Project
from smallops.review.policy import sample, until_graduated
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.eval_log import CacheScope, EvalRunRow, save_eval_run
from smallops.storage.schema import RUN_COLUMNS
from smallops.storage.store import RowBatch, RowStore, land

from conftest import smallops
from models import Triage

PINNED = "openai:gpt-4o-mini-2024-07-18"
CANDIDATE = "openai:gpt-4.1-mini-2025-04-14"
CONFIGURED_TOML = f"""
[providers.openai]
api_key = "vault:secret/openai#key"

[prices."{PINNED}"]
input = 0.15
output = 0.6

[alerts.channels.ops-slack]
kind = "slack"

[alerts.owners]
"ops@example.com" = ["ops-slack"]
"""


def statuses(card: dict[str, Any]) -> dict[str, str]:
    return {p["id"]: p["status"] for p in card["practices"]}


def doctor_json(capsys: Any, folder: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = smallops(capsys, "-p", str(folder), "doctor", "--json", *args)
    assert err == "", err
    [line] = out.splitlines()
    return code, json.loads(line)


def init(capsys: Any, folder: Path) -> Path:
    assert smallops(capsys, "init", str(folder))[0] == 0
    return folder


def configure(folder: Path) -> None:
    """Everything the playbook asks, on an `init` project: a rate limit, a vault key, prices,
    an alert channel for the owner."""
    module = folder / "workflows" / "email_triage.py"
    text = module.read_text()
    module.write_text(text.replace('review="all",', 'review="all",\n    rate_limit="60/minute",'))
    toml = folder / "smallops.toml"
    toml.write_text(toml.read_text() + CONFIGURED_TOML)


def faked(wf: Workflow[Any], model: str | None = None) -> Workflow[Any]:
    """The workflow answering from a local fake named like the real provider: its calls go
    through the whole lifecycle and are logged and priced like the real one's."""
    changes: dict[str, Any] = {"provider": FakeProvider(name="openai")}
    if model:
        changes["model"] = model
    return wf.replace(**changes)


def use(folder: Path, calls: int) -> None:
    """Production calls, a baseline of the current prompt and a drift check, all logged."""
    wf = faked(Project(folder).workflow("email-triage"))
    cases = workflow_cases(wf)
    for case in cases[:calls]:
        wf.run(**case.input)
    wf.plan().writer.flush()
    asyncio.run(run_gate(prepare_eval(wf), update_baseline=True))
    candidate = faked(wf, CANDIDATE)
    asyncio.run(run_eval(candidate, cases))


# --- the three projects of the README ----------------------------------------------------


def test_the_demo_ends_with_the_scorecard_and_doctor_judges_its_log(tmp_path, capsys):
    folder = tmp_path / "demo"
    code, out, _ = smallops(capsys, "demo", "--dir", str(folder))
    assert code == 0
    tail = out.splitlines()[-5:]
    assert "smallops doctor" in tail[0]
    assert tail[1].lstrip().startswith("Tier 1 (under 10)") and "✓ logged" in tail[1]
    assert "✗ cost" in tail[2] and "✗ secrets" in tail[2]
    assert tail[4].strip().startswith("Tier 1 met;") and f"-p {folder} doctor" in tail[4]
    code, card = doctor_json(capsys, folder)
    found = statuses(card)
    assert code == 1 and not card["met"]
    assert found["every_call_logged"] == found["one_workflow_in_production"] == "pass"
    assert found["human_review_first_month"] == "pass"
    cost = next(p for p in card["practices"] if p["id"] == "cost_tracked")
    assert cost["status"] == "fail" and "fake:keyword-rules" in cost["evidence"]
    assert (
        cost["fix"] == 'set [prices."fake:keyword-rules"] in smallops.toml (USD per million tokens)'
    )
    assert found["secrets_from_a_store"] == found["alerts_to_an_owner"] == "fail"
    assert doctor_json(capsys, folder, "--tier", "1")[0] == 0


def test_a_fresh_init_project_meets_tier_1_and_says_what_tier_2_needs(tmp_path, capsys):
    folder = init(capsys, tmp_path / "fresh")
    code, card = doctor_json(capsys, folder)
    assert code == 1
    assert statuses(card) == {
        "every_call_logged": "warn",  # the log answers, nothing called yet
        "one_workflow_in_production": "warn",
        "human_review_first_month": "pass",  # review="all" before its first call
        "structured_outputs": "pass",
        "cost_tracked": "pass",  # genai-prices knows the pinned model
        "eval_sets": "pass",
        "secrets_from_a_store": "fail",
        "evals_in_ci": "warn",  # init's CI runs the gate; no baseline yet
        "rate_limits_and_breakers": "warn",
        "pinned_models_drift_checked": "warn",
        "alerts_to_an_owner": "fail",
        "documented_fallback": "pass",
    }
    by_id = {p["id"]: p for p in card["practices"]}
    assert by_id["secrets_from_a_store"]["evidence"] == (
        "openai: key in $OPENAI_API_KEY, not in a secret store"
    )
    assert by_id["evals_in_ci"]["fix"].startswith("smallops eval email-triage --update-baseline")
    assert all(p["fix"] for p in card["practices"] if p["status"] != "pass")
    assert all(p["fix"] is None for p in card["practices"] if p["status"] == "pass")
    assert [t["met"] for t in card["tiers"]] == [True, False, False]
    assert doctor_json(capsys, folder, "--tier", "1")[0] == 0
    code, card = doctor_json(capsys, folder, "--tier", "2")
    assert code == 1 and [t["judged"] for t in card["tiers"]] == [True, True, False]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_fully_configured_project_passes_every_practice(
    tmp_path, capsys, monkeypatch, backend, request
):
    if backend == "postgres":
        monkeypatch.setenv("SMALLOPS_DATABASE_URL", request.getfixturevalue("postgres_url"))
    folder = init(capsys, tmp_path / "ops")
    configure(folder)
    use(folder, calls=12)
    code, card = doctor_json(capsys, folder)
    assert statuses(card) == dict.fromkeys(PRACTICE_IDS, "pass"), card["practices"]
    assert code == 0 and card["met"]
    evidence = {p["id"]: p["evidence"] for p in card["practices"]}
    assert evidence["every_call_logged"].startswith("12 calls in 7 days")
    assert ("Postgres" if backend == "postgres" else "SQLite") in evidence["every_call_logged"]
    assert evidence["cost_tracked"].startswith("all 12 calls in 30 days priced: $")
    assert evidence["secrets_from_a_store"] == "openai: key from Vault"  # never the reference
    assert evidence["pinned_models_drift_checked"].startswith("email-triage: pinned, drift checked")
    assert evidence["alerts_to_an_owner"] == "email-triage → ops@example.com via ops-slack"
    assert evidence["evals_in_ci"] == "`smallops eval --ci` in .github/workflows/smallops.yml:22"
    code, out, _ = smallops(capsys, "-p", str(folder), "doctor")
    assert code == 0 and out.rstrip().endswith("✓ Tier 3 met.")


# --- the exit code, the text, the log that does not answer -------------------------------


def test_the_text_fits_80_columns_and_the_verdict_names_the_failing_practices(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "80")
    folder = init(capsys, tmp_path / "fresh")
    code, out, err = smallops(capsys, "-p", str(folder), "doctor", "--tier", "2")
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert all(line == line.rstrip() for line in lines)
    assert "Tier 3 · 25 to 50 people · 1 pass, 3 warn, 1 fail · beyond --tier 2" in lines
    assert (
        "  ✗ Secrets from a store: openai: key in $OPENAI_API_KEY, not in a secret store" in lines
    )
    assert "    fix: set [providers.openai] api_key = " in out
    verdict = out[out.rindex("✗ Tier 2") :]
    assert "1 practice fails (Secrets from a store)" in " ".join(verdict.split())


def test_an_unreachable_database_fails_the_log_practice_in_one_line(tmp_path, capsys, monkeypatch):
    folder = init(capsys, tmp_path / "fresh")
    password = "pw-" + uuid7()[-12:]  # libpq takes one in the query too
    url = f"postgresql://doctor@127.0.0.1:9/nowhere?password={password}"
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", url)
    code, card = doctor_json(capsys, folder, "--tier", "1")
    assert code == 1 and password not in json.dumps(card)
    logged = card["practices"][0]
    assert logged["status"] == "fail" and "\n" not in logged["evidence"]
    assert logged["evidence"].startswith("cannot open the log database postgresql")
    assert "SMALLOPS_DATABASE_URL" in logged["fix"]
    found = statuses(card)
    assert found["cost_tracked"] == found["pinned_models_drift_checked"] == "warn"
    code, out, err = smallops(capsys, "-p", str(folder), "doctor")
    assert code == 1 and err == "" and "Traceback" not in out
    assert "✗ Every call logged: cannot open the log database" in out


def test_a_folder_that_is_not_a_project_is_one_line_and_exit_2(tmp_path, capsys):
    code, out, err = smallops(capsys, "-p", str(tmp_path), "doctor")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_a_bad_tier_is_a_usage_error(tmp_path, capsys):
    folder = init(capsys, tmp_path / "fresh")
    code, _, err = smallops(capsys, "-p", str(folder), "doctor", "--tier", "4")
    assert code == 2 and "--tier" in err


# --- the log's history, on both databases ------------------------------------------------


def run_row(workflow: str, started: datetime, **values: Any) -> tuple[Any, ...]:
    """A `runs` row as the log writer lands it (RUN_COLUMNS order, epoch-second times)."""
    row: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    at = started.timestamp()
    row.update(
        id=uuid7(),
        workflow=workflow,
        prompt_version="v1",
        provider="openai",
        model_requested="gpt-4o-mini-2024-07-18",
        model_served="gpt-4o-mini-2024-07-18",
        model_mismatch=False,
        allow_unpinned=False,
        status="auto",
        review_policy="all",
        origin="app",
        fallback="review",
        attempt_count=1,
        input_tokens=100,
        output_tokens=10,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_usd=0.001,
        cost_source="override",
        latency_ms=100.0,
        started_at=at,
        finished_at=at + 0.1,
        inputs="{}",
        attempts="[]",
    )
    row.update(values)
    return tuple(row[name] for name in RUN_COLUMNS)


def logged(engine: Any, rows: list[tuple[Any, ...]]) -> None:
    store = RowStore(engine)
    land(store, RowBatch(runs=rows), lambda _batch, _why: None)
    store.close()


def drift_checked(engine: Any, model: str, at: datetime) -> None:
    row = EvalRunRow(
        uuid7(), "triage", "v1", model, "evals/triage.jsonl", 20, 1, 20, None, at, at, {}
    )
    scope = CacheScope("triage", "v1", model)
    save_eval_run(engine, row, [], measured=[], scope=scope, fresh=[])


def scored(tmp_path: Path, database_url: str, **workflow: Any) -> Scorecard:
    (tmp_path / "triage.prompt").write_text("[user]\n{{ text }}")
    settings = Settings(root=tmp_path, database_url=database_url)
    options: dict[str, Any] = {"model": PINNED, "output": Triage, "fallback": "review"}
    options.update(workflow)
    wf = Workflow("triage", prompt="triage.prompt", settings=settings, base_dir=tmp_path, **options)
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    now = datetime.now(timezone.utc)
    return judge(
        Subject(tmp_path, settings, {"triage": wf}), read_log(settings, lambda: engine, now), now
    )


def finding(card: Scorecard, practice: str) -> tuple[str, str]:
    [found] = [f for f in card.findings if f.practice == practice]
    return found.status, found.evidence


def test_the_log_history_is_judged_from_the_rollups_and_the_first_month(tmp_path, database_url):
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    now = datetime.now(timezone.utc)
    first = now - timedelta(days=45)
    logged(
        engine,
        [run_row("triage", first + timedelta(hours=i), review_policy="none") for i in range(5)]
        + [run_row("triage", first + timedelta(days=31), review_policy="none")]  # after it
        + [run_row("triage", now - timedelta(days=3, minutes=i)) for i in range(4)]
        + [
            run_row("triage", now - timedelta(days=2), model_requested="local", cost_usd=None)
            for _ in range(2)
        ]
        + [run_row("triage", now - timedelta(hours=1), origin="eval")],  # not production
    )
    drift_checked(engine, CANDIDATE, now - timedelta(days=40))
    drift_checked(engine, PINNED, now - timedelta(days=1))  # the pinned model: no drift check
    card = scored(tmp_path, database_url)
    status, evidence = finding(card, "every_call_logged")
    assert status == "pass" and evidence.startswith("6 calls in 7 days, the last 2 days ago")
    assert finding(card, "one_workflow_in_production") == ("pass", "triage: 7 calls in 30 days")
    assert finding(card, "human_review_first_month") == (
        "warn",
        "triage: 5 of 5 runs in its first month skipped full review",
    )
    assert finding(card, "cost_tracked") == (
        "warn",
        "5 of 7 calls in 30 days priced; not openai:local",
    )
    assert finding(card, "pinned_models_drift_checked") == (
        "warn",
        "triage: pinned; last drift check 40 days ago",
    )
    drift_checked(engine, CANDIDATE, now - timedelta(days=2))
    status, evidence = finding(scored(tmp_path, database_url), "pinned_models_drift_checked")
    assert status == "pass" and evidence == "triage: pinned, drift checked 2 days ago"
    logged(
        engine, [run_row("triage", now, model_served="gpt-4o-mini-2024-09-30", model_mismatch=True)]
    )
    status, evidence = finding(scored(tmp_path, database_url), "pinned_models_drift_checked")
    assert status == "warn" and "another model answered 1 time in 30 days" in evidence


def test_old_calls_only_warn_that_nothing_was_called_this_week(tmp_path, database_url):
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    logged(engine, [run_row("triage", datetime.now(timezone.utc) - timedelta(days=9))])
    status, evidence = finding(scored(tmp_path, database_url), "every_call_logged")
    assert status == "warn" and evidence == "no calls in the last 7 days; the last was 9 days ago"


# --- what the project says --------------------------------------------------------------


def test_review_policies_in_the_first_month(tmp_path):
    """Before its first call and for a month after, the policy must show a human every output."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    cases = [
        ("all", "pass", 'review="all"'),
        ("always", "pass", 'review="always"'),
        (until_graduated(), "pass", "review=until_graduated(0.95)"),
        (until_graduated(min_days=7), "warn", "review=until_graduated(0.95) in its first month"),
        (sample(0.2), "warn", "review=sample(0.2) in its first month leaves outputs unseen"),
        ("none", "fail", 'review="none" in its first month: nobody checks it'),
    ]
    for policy, expected, shown in cases:
        status, evidence = finding(scored(tmp_path, url, review=policy), "human_review_first_month")
        assert (status, evidence) == (expected, evidence), policy
        assert evidence.startswith(f"triage: {shown}") and evidence.endswith("(no calls yet)")


def test_guards_and_fallbacks(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    card = scored(tmp_path, url, rate_limit="10/second", breaker=None, fallback="raise")
    assert finding(card, "rate_limits_and_breakers") == (
        "warn",
        "triage: 10 per 1 second, breaker off",
    )
    assert finding(card, "documented_fallback")[0] == "warn"
    card = scored(tmp_path, url, breaker=None)
    assert finding(card, "rate_limits_and_breakers") == (
        "fail",
        "triage: no rate limit, breaker off",
    )
    assert finding(card, "documented_fallback") == ("pass", "triage → the human review queue")


def test_keys_in_env_references_fail_and_store_references_pass_without_showing_them(
    tmp_path, capsys
):
    folder = init(capsys, tmp_path / "ops")
    toml = folder / "smallops.toml"
    base = toml.read_text()
    toml.write_text(base + '\n[providers.openai]\napi_key = "env:TEAM_OPENAI_KEY"\n')
    status, evidence = finding(examine(Project(folder)), "secrets_from_a_store")
    assert (status, evidence) == ("fail", "openai: key in $TEAM_OPENAI_KEY, not in a secret store")
    toml.write_text(base + '\n[providers.openai]\napi_key = "command:pass show team/openai"\n')
    status, evidence = finding(examine(Project(folder)), "secrets_from_a_store")
    assert (status, evidence) == ("pass", "openai: key from a command")


def test_the_key_judged_is_the_one_the_workflows_provider_reads(tmp_path, capsys):
    """smallops.toml names a store, but the workflow's code makes its own provider that reads
    an environment variable: its calls use the variable, so the practice fails (and the other
    way round, a store named in the code passes)."""
    folder = init(capsys, tmp_path / "ops")
    toml = folder / "smallops.toml"
    toml.write_text(toml.read_text() + '\n[providers.openai]\napi_key = "vault:secret/openai#k"\n')
    module = folder / "workflows" / "email_triage.py"
    text = module.read_text().replace(
        "from smallops import Workflow",
        "from smallops import Workflow\nfrom smallops.providers.openai import OpenAIProvider",
    )
    made = text.replace('review="all",', 'review="all",\n    provider=OpenAIProvider(%s),')
    module.write_text(made % 'api_key_env="TEAM_OPENAI_KEY"')
    status, evidence = finding(examine(Project(folder)), "secrets_from_a_store")
    assert (status, evidence) == ("fail", "openai: key in $TEAM_OPENAI_KEY, not in a secret store")
    toml.write_text(toml.read_text().replace("vault:secret/openai#k", "env:OPENAI_API_KEY"))
    module.write_text(made % 'api_key="aws-sm:prod/openai#api_key"')
    status, evidence = finding(examine(Project(folder)), "secrets_from_a_store")
    assert (status, evidence) == ("pass", "openai: key from AWS Secrets Manager")


def test_a_local_server_needs_no_key_in_a_store_and_a_remote_one_does(tmp_path, capsys):
    """An OpenAI-compatible server on the loopback (Ollama) takes no key: asking for one in a
    secret store would fail tier 2 for every project that runs its model locally."""
    folder = init(capsys, tmp_path / "ops")
    module = folder / "workflows" / "email_triage.py"
    module.write_text(
        module.read_text().replace(
            'model="openai:gpt-4o-mini-2024-07-18"', 'model="ollama:llama3.1:8b-instruct-q4_K_M"'
        )
    )
    toml = folder / "smallops.toml"
    base = toml.read_text()
    for url, expected in [
        ("http://localhost:11434/v1", ("pass", "ollama: a server on this machine, no key needed")),
        ("http://127.0.0.1:8000/v1", ("pass", "ollama: a server on this machine, no key needed")),
        (
            "https://gpu.acme.example/v1",
            ("fail", "ollama: key in $OLLAMA_API_KEY, not in a secret store"),
        ),
    ]:
        toml.write_text(base + f'\n[providers.ollama]\nkind = "openai"\nbase_url = "{url}"\n')
        assert finding(examine(Project(folder)), "secrets_from_a_store") == expected, url


def test_eval_sets_under_20_warn_and_a_missing_one_fails(tmp_path, capsys):
    folder = init(capsys, tmp_path / "ops")
    evals = folder / "evals" / "email_triage.jsonl"
    evals.write_text("\n".join(evals.read_text().splitlines()[:12]) + "\n")
    status, evidence = finding(examine(Project(folder)), "eval_sets")
    assert status == "warn" and evidence.startswith("email-triage: 12 examples in evals/")
    evals.unlink()
    assert finding(examine(Project(folder)), "eval_sets")[0] == "fail"


def test_the_ci_gate_is_found_in_the_repository_and_comments_do_not_count(tmp_path):
    repo = tmp_path / "repo"
    project = repo / "ops"
    project.mkdir(parents=True)
    (repo / ".git").mkdir()
    assert scan_ci(project).files == ()
    ci = repo / ".gitlab-ci.yml"
    ci.write_text("evals:\n  script:\n    # - smallops eval --ci\n    - smallops -p ops eval\n")
    scan = scan_ci(project)
    assert scan.gate is None and scan.ungated is not None and scan.ungated.number == 4
    ci.write_text(ci.read_text() + "    - smallops -p ops eval --ci --junit out.xml\n")
    gate = scan_ci(project).gate
    assert gate is not None and gate.shown(repo) == ".gitlab-ci.yml:5"
    (repo / ".git").rmdir()  # not a repository: only the project's own folder is read
    assert scan_ci(project).files == ()


def test_a_gate_below_the_repositorys_root_never_runs_and_fails(tmp_path, capsys):
    """`smallops init ops` inside a repository writes ops/.github/workflows/smallops.yml, which
    GitHub never reads: the gate is not in CI until the file is at the root."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    folder = init(capsys, repo / "ops")
    status, evidence = finding(examine(Project(folder)), "evals_in_ci")
    assert status == "fail" and evidence.startswith(".github/workflows/smallops.yml:")
    assert "CI reads its files at the repository's root only" in evidence
    (repo / ".github").mkdir()
    (folder / ".github" / "workflows").rename(repo / ".github" / "workflows")
    status, evidence = finding(examine(Project(folder)), "evals_in_ci")
    assert status == "warn" and "has no baseline" in evidence  # the gate now runs
    (repo / ".git").rmdir()  # not a repository: the project's own files are the root's
    (repo / ".github" / "workflows").rename(folder / ".github" / "workflows")
    assert finding(examine(Project(folder)), "evals_in_ci")[0] == "warn"


def test_every_practice_is_judged_once_in_the_playbooks_order(tmp_path, capsys):
    folder = init(capsys, tmp_path / "ops")
    card = examine(Project(folder))
    assert [f.practice for f in card.findings] == list(PRACTICE_IDS)
    assert [f.tier for f in card.findings] == sorted(f.tier for f in card.findings)
    assert {p.tier for p in PRACTICES.values()} == {1, 2, 3}


def test_runs_waiting_in_the_spool_or_set_aside_are_warnings(tmp_path):
    """What the log has not taken yet (another process spooled it) or refused (the quarantine)
    is not "every call logged"."""
    from smallops.storage.spool import Spool, spool_folder
    from smallops.storage.writer import quarantine_for

    url = f"sqlite:///{tmp_path / 'log.db'}"
    settings = Settings(root=tmp_path, database_url=url)
    engine = get_engine(normalise_url(url, tmp_path))
    ensure_schema(engine)
    logged(engine, [run_row("triage", datetime.now(timezone.utc))])
    spool = Spool(spool_folder(settings.spool_dir, normalise_url(url, tmp_path)))
    spool.append(RowBatch(runs=[run_row("triage", datetime.now(timezone.utc))]))
    spool.close()
    status, evidence = finding(scored(tmp_path, url), "every_call_logged")
    assert (status, evidence) == ("warn", "the spool holds 1 run for the SQLite log")
    quarantine = quarantine_for(settings.log)
    quarantine.add(RowBatch(runs=[run_row("triage", datetime.now(timezone.utc))]), "refused")
    quarantine.close()
    status, evidence = finding(scored(tmp_path, url), "every_call_logged")
    assert (status, evidence) == ("warn", "the SQLite log refused 1 record, set aside")


def test_a_module_that_does_not_load_is_named(tmp_path, capsys):
    folder = init(capsys, tmp_path / "ops")
    (folder / "workflows" / "broken.py").write_text("import nowhere_to_be_found\n")
    status, evidence = finding(examine(Project(folder)), "one_workflow_in_production")
    assert status == "warn" and evidence.startswith("workflows/broken.py")
    (folder / "workflows" / "email_triage.py").unlink()
    card = examine(Project(folder))
    status, evidence = finding(card, "one_workflow_in_production")
    assert status == "fail" and "ModuleNotFoundError" in evidence
    assert finding(card, "structured_outputs") == ("warn", "no workflow yet")
