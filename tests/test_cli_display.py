"""What a person reads in a terminal: whole run ids at any width, ids that work as printed,
production calls by default, one call on one screen, a review loop that moves on, and fields
in the order they were written (Postgres included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from smallops.ids import short_id

from conftest import EMAIL, GOOD, smallops
from emulators import ok, status

ROOT = Path(__file__).resolve().parent.parent
LONG = {**GOOD, "summary": "The customer asks where the May invoice went " * 4}
PIN = "openai:gpt-4o-mini-2024-07-18"


def run_all(capsys, project: Path, *outputs: object) -> list[str]:
    """One recorded call per scripted answer; their run ids, in order."""
    ids = []
    for i, _ in enumerate(outputs):
        inputs = json.dumps({**EMAIL, "subject": f"Invoice {i}"})
        code, out, err = smallops(
            capsys, "-p", str(project), "run", "email-triage", "--json", inputs, "--json"
        )
        assert code in (0, 1), err
        ids.append(json.loads(out)["run_id"])
    return ids


@pytest.fixture
def logged(project, emulator, capsys, database_url, monkeypatch) -> list[str]:
    """Three calls in the log: two long outputs and a failed call, on SQLite and Postgres."""
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    answers = (ok(LONG), ok(LONG), status(400, message="bad request " * 10))
    emulator.script(*answers)
    return run_all(capsys, project, *answers)


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_no_table_cuts_a_run_id_or_a_model_pin_and_none_is_wider_than_the_terminal(
    project, emulator, capsys, monkeypatch, columns, tmp_path
):
    monkeypatch.setenv("COLUMNS", str(columns))
    emulator.default = ok(LONG)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps({**EMAIL, "subject": f"s{i}"}) for i in range(3)))
    code, table, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "-i", str(inputs)
    )
    assert code == 0, err
    _, out, _ = smallops(capsys, "-p", str(project), "logs", "--json")
    ids = [json.loads(line)["id"] for line in out.splitlines()]
    assert len(ids) == 3
    views = {
        "run": table,
        "logs": smallops(capsys, "-p", str(project), "logs")[1],
        "logs --origin all": smallops(capsys, "-p", str(project), "logs", "--origin", "all")[1],
        "review list": smallops(capsys, "-p", str(project), "review", "list")[1],
        "review list --state all": smallops(
            capsys, "-p", str(project), "review", "list", "--state", "all"
        )[1],
    }
    for name, text in views.items():
        assert all(short_id(run_id) in text for run_id in ids), (name, text)
        assert all(len(line) <= columns for line in text.splitlines()), (name, text)
    assert PIN in table  # the title names the pinned model whole
    code, stats, err = smallops(capsys, "-p", str(project), "review", "stats")
    assert code == 0 and all(len(line) <= columns for line in stats.splitlines()), (err, stats)
    lines = [line.split() for line in stats.splitlines()]
    assert ["class", "reviews"] in [line[:2] for line in lines] and ["status"] in [
        line[-2:-1] for line in lines
    ] + [line[-1:] for line in lines], stats  # the header's status is whole
    classes = [line for line in lines if line and line[0].startswith(("category=", "urgency="))]
    assert len(classes) == 8 and all("review" in line for line in classes), stats
    assert "gpt-4o-mini-2024-07-18" in stats  # the model serving the class, whole
    code, listed, _ = smallops(capsys, "-p", str(project), "list")
    assert code == 0 and PIN in listed and "…" not in listed
    assert all(len(line) <= columns for line in listed.splitlines()), listed


def test_with_json_nothing_is_cut(project, emulator, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    emulator.script(ok(LONG))
    [run_id] = run_all(capsys, project, LONG)
    _, out, _ = smallops(capsys, "-p", str(project), "logs", "--json")
    assert json.loads(out)["id"] == run_id
    _, out, _ = smallops(capsys, "-p", str(project), "review", "list", "--json")
    assert json.loads(out)["output"]["summary"] == LONG["summary"]


def test_show_and_review_approve_take_the_id_as_printed_or_any_unique_start_of_it(
    project, capsys, logged
):
    """On SQLite and Postgres: the short id a table prints, its first 8 characters, a start of
    the whole id, and the whole id all find the run; an ambiguous or too short one is refused."""
    first, second, _ = logged
    _, table, _ = smallops(capsys, "-p", str(project), "logs")
    assert short_id(first) in table
    for given in (short_id(first), short_id(first)[:8], first[:23], first, first.upper()):
        code, out, err = smallops(capsys, "-p", str(project), "show", given)
        assert code == 0 and out.startswith(f"run {first}"), (given, err)
    code, _, err = smallops(capsys, "-p", str(project), "show", short_id(first)[:7])
    assert code == 2 and "too short" in err and "at least 8" in err
    code, out, err = smallops(
        capsys, "-p", str(project), "review", "approve", short_id(second)[:8], "--reviewer", "ann"
    )
    assert code == 0 and out.startswith(f"approved run {short_id(second)}"), err
    # Ids made together share their start (the time): 8+ characters, but once a minute not.
    same = takewhile(lambda pair: pair[0] == pair[1], zip(first, second, strict=True))
    shared = "".join(a for a, _ in same)
    if len(shared) >= 8:
        code, _, err = smallops(capsys, "-p", str(project), "show", shared)
        assert code == 2 and "matches several runs" in err
        code, _, err = smallops(capsys, "-p", str(project), "review", "approve", shared)
        assert code == 2 and "matches several items" in err


def test_logs_show_production_calls_unless_origin_says_otherwise(
    project, emulator, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "120")
    emulator.default = ok(GOOD)
    [production] = run_all(capsys, project, GOOD)
    smallops(capsys, "-p", str(project), "eval", "email-triage")

    def ids(*args: str) -> list[str]:
        code, out, err = smallops(capsys, "-p", str(project), "logs", "-n", "500", *args)
        assert code == 0, err
        return [json.loads(line)["id"] for line in out.splitlines()]

    assert ids("--json") == [production]
    assert ids("--json", "--origin", "production") == [production]
    evals = ids("--json", "--origin", "eval")
    assert len(evals) >= 20 and production not in evals
    assert sorted(ids("--json", "--origin", "all")) == sorted([production, *evals])
    _, table, _ = smallops(capsys, "-p", str(project), "logs", "-n", "500", "--origin", "all")
    rows = {line.split()[-1]: line for line in table.splitlines()[2:-1]}
    assert "production" in rows[short_id(production)] and "eval" in rows[short_id(evals[0])]
    assert "origin" in table.splitlines()[1]
    code, _, err = smallops(capsys, "-p", str(project), "logs", "--origin", "tests")
    assert code == 2 and "--origin" in err


def test_show_prints_one_call_readably_and_the_prompt_only_when_asked(project, emulator, capsys):
    emulator.script(ok(GOOD))
    body = "Hello,\n\nwhere is my May invoice?\n\nAnn"
    code, out, _ = smallops(
        capsys,
        "-p",
        str(project),
        "run",
        "email-triage",
        "--json",
        json.dumps({**EMAIL, "body": body}),
        "--json",
    )
    run_id = json.loads(out)["run_id"]
    smallops(capsys, "-p", str(project), "review", "reject", run_id, "--reason", "not ours")
    code, out, _ = smallops(capsys, "-p", str(project), "show", run_id)
    assert code == 0 and len(out.splitlines()) < 45, out
    assert "\\n" not in out and "  body     Hello,\n" in out and "where is my May invoice?" in out
    assert "  category  billing" in out and "1 call: HTTP 200, finish=stop" in out
    assert "reject by" in out and "not ours" in out
    assert "You triage inbound email" not in out  # the system prompt
    code, full, _ = smallops(capsys, "-p", str(project), "show", run_id, "--prompt")
    assert "You triage inbound email" in full and "── message: user" in full
    code, out, _ = smallops(capsys, "-p", str(project), "show", run_id, "--json")
    record = json.loads(out)
    assert record["inputs"]["body"] == body and record["prompt"]["template"].startswith("{#")
    assert record["attempts"][0]["response"] and record["attempts"][0]["request"]
    assert [h["action"] for h in record["review"]["history"]] == ["reject"]
    assert record["review"]["state"] == "rejected"


def test_fields_keep_their_written_order_on_every_database(
    project, emulator, capsys, database_url, monkeypatch, tmp_path
):
    """Postgres (JSONB) sorts object keys: inputs come back in the prompt's order (sender,
    subject, body) and outputs in the schema's (category, urgency, summary) all the same, in
    the human views and with --json."""
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    emulator.script(ok(GOOD))
    [run_id] = run_all(capsys, project, GOOD)

    def order(text: str, *words: str) -> list[int]:
        return [text.index(word) for word in words]

    _, out, _ = smallops(capsys, "-p", str(project), "show", run_id)
    inputs, output = out.split("── output")[0], out.split("── output")[1]
    assert order(inputs, "  sender", "  subject", "  body") == sorted(
        order(inputs, "  sender", "  subject", "  body")
    )
    assert order(output, "  category", "  urgency", "  summary") == sorted(
        order(output, "  category", "  urgency", "  summary")
    )
    _, out, _ = smallops(capsys, "-p", str(project), "review", "list")
    assert "category=billing urgency=normal summary=" in out
    env = {**os.environ, "SMALLOPS_DATABASE_URL": database_url, "SMALLOPS_REVIEWER": "dee"}
    done = review_next(project, "q\n", env)
    assert done.stdout.index("sender") < done.stdout.index("subject") < done.stdout.index("body")
    assert done.stdout.index("category") < done.stdout.index("urgency")

    # --json too: scripts that print or diff the objects see the same order.
    inputs, outputs = ["sender", "subject", "body"], ["category", "urgency", "summary"]
    fixed = json.dumps({**GOOD, "urgency": "high"})
    smallops(capsys, "-p", str(project), "review", "correct", run_id, "--output", fixed)
    _, out, _ = smallops(capsys, "-p", str(project), "show", run_id, "--json")
    record = json.loads(out)
    assert list(record["inputs"]) == inputs and list(record["output"]) == outputs
    assert list(record["review"]["final_output"]) == outputs
    _, out, _ = smallops(capsys, "-p", str(project), "review", "list", "--state", "all", "--json")
    item = json.loads(out)
    assert list(item["inputs"]) == inputs and list(item["output"]) == outputs
    assert list(item["final_output"]) == outputs


def test_the_review_page_shows_fields_in_their_written_order(tmp_path, database_url):
    """The web item page uses the same ordering as the CLI (here on SQLite and Postgres)."""
    from starlette.testclient import TestClient

    from smallops import FakeProvider, Settings, Workflow
    from smallops.review.desk import ReviewDesk
    from smallops.web.app import create_app

    from models import Triage

    (tmp_path / "t.prompt").write_text("[user]\n{{ sender }} {{ subject }}\n{{ body }}")
    wf = Workflow(
        "triage",
        model="fake:rules",
        prompt="t.prompt",
        output=Triage,
        provider=FakeProvider(lambda _: GOOD),
        base_dir=tmp_path,
        fallback="review",
        settings=Settings(root=tmp_path, database_url=database_url),
    )
    run_id = wf.run(**EMAIL).run_id
    wf.plan().writer.flush()
    desk = ReviewDesk(wf.plan().writer.store.engine, {wf.name: wf})
    settings = Settings(root=tmp_path, database_url="unused")
    app = create_app(
        desk, settings, require_login=False, reviewer="ann", secret_key=b"test-key", env={}
    )
    client = TestClient(app, base_url="http://127.0.0.1")
    item = client.get(f"/items/{run_id}", headers={"Accept": "application/json"}).json()["item"]
    assert list(item["inputs"]) == ["sender", "subject", "body"]
    assert list(item["output"]) == ["category", "urgency", "summary"]
    page = client.get(f"/items/{run_id}").text
    assert page.index("<dt>sender") < page.index("<dt>subject") < page.index("<dt>body")


def review_next(project: Path, keys: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "smallops"
    return subprocess.run(
        [str(script), "-p", str(project), "review", "next"],
        input=keys,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_skip_moves_on_through_every_item_once_and_enter_decides_nothing(
    project, emulator, capsys, database_url, monkeypatch
):
    """On SQLite and Postgres: four skips see four items, then the queue has nothing new;
    Enter is no key at all (it asks again), and the end of the input gives the item back."""
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    emulator.default = ok(GOOD)
    ids = run_all(capsys, project, GOOD, GOOD, GOOD, GOOD)
    env = {**os.environ, "SMALLOPS_DATABASE_URL": database_url, "SMALLOPS_REVIEWER": "dee"}
    done = review_next(project, "s\n" * 10, env)
    assert done.returncode == 0, done.stderr
    assert [run_id for run_id in ids if f"run {run_id}" in done.stdout] == ids
    assert all(done.stdout.count(f"run {run_id}") == 1 for run_id in ids)
    assert "nothing new in the queue (4 skipped, still pending)" in done.stdout
    done = review_next(project, "\n\n\n", env)  # Enter three times, then the input ends
    assert done.returncode == 0 and "0 decided as dee" in done.stdout, done.stderr
    assert done.stdout.count("run ") == 1  # no skip: still the first item
    from smallops.project import Project
    from smallops.review.queue import ReviewQueue

    queue = ReviewQueue(Project(project).engine())
    assert all(queue.item(run_id)["state"] == "pending" for run_id in ids)
    assert all(queue.item(run_id)["claimed_by"] is None for run_id in ids)


def test_help_follows_the_terminal_width_up_to_100_columns(capsys, monkeypatch):
    for columns, widest in ((60, 60), (200, 100)):
        monkeypatch.setenv("COLUMNS", str(columns))
        code, out, _ = smallops(capsys, "logs", "--help")
        assert code == 0 and max(len(line) for line in out.splitlines()) <= widest, out
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = smallops(capsys, "review", "approve", "--help")
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 60, out


def test_serve_needs_nothing_beyond_pip_install_smallops(capsys):
    """The web dependencies are core; `smallops[web]` stays as an empty alias; Postgres,
    Redis and Anthropic stay extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("[")[0] for dep in project["dependencies"]}
    assert {"starlette", "uvicorn", "python-multipart"} <= core
    extras = project["optional-dependencies"]
    assert extras["web"] == []
    assert {"anthropic", "psycopg", "redis"}.isdisjoint(core)
    code, out, _ = smallops(capsys, "serve", "--help")
    assert code == 0 and "Serve the review queue in a browser" in out


def test_init_says_which_extra_each_templates_provider_needs(tmp_path, capsys):
    code, out, _ = smallops(capsys, "init", str(tmp_path / "a"), "-t", "document-extraction")
    assert code == 0 and "pip install 'smallops[anthropic]'" in out
    assert "export ANTHROPIC_API_KEY=..." in out
    for template in ("email-triage", "lead-qualification"):
        code, out, _ = smallops(capsys, "init", str(tmp_path / template), "-t", template)
        assert code == 0 and "pip install" not in out and "smallops ships its SDK" in out
        assert "export OPENAI_API_KEY=..." in out and "smallops serve" in out
