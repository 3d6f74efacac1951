"""The smallops command: each subcommand, its --json output, and one-line errors with exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smallops.scaffold import TEMPLATE_NAMES

from conftest import EMAIL, GOOD, smallops
from emulators import ok, status


def test_init_writes_a_working_project_for_every_template(tmp_path, capsys):
    for template in TEMPLATE_NAMES:
        folder = tmp_path / template
        code, out, _ = smallops(capsys, "init", str(folder), "--template", template)
        assert code == 0 and "created" in out
        module = template.replace("-", "_")
        for path in (
            "smallops.toml",
            ".gitignore",
            ".github/workflows/smallops.yml",
            f"workflows/{module}.py",
            f"workflows/{module}.prompt",
            f"evals/{module}.jsonl",
        ):
            assert (folder / path).is_file(), path
        cases = [
            json.loads(line)
            for line in (folder / f"evals/{module}.jsonl").read_text().splitlines()
            if line.strip()
        ]
        assert len(cases) >= 20 and len({c["id"] for c in cases}) == len(cases)
        code, out, _ = smallops(capsys, "--project", str(folder), "list", "--json")
        assert code == 0 and json.loads(out)["name"] == template
        _, out, _ = smallops(capsys, "init", str(folder), "--template", template)
        assert "kept" in out and "created" not in out


def test_init_with_an_unknown_template_is_a_usage_error(tmp_path, capsys):
    code, _, err = smallops(capsys, "init", str(tmp_path / "x"), "--template", "crm")
    assert code == 2 and "unknown template 'crm'" in err and "email-triage" in err


def test_run_with_inline_json_prints_a_table(project, emulator, capsys):
    emulator.script(ok(GOOD))
    code, out, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    assert code == 0, err
    assert "pending_review" in out and "category=billing" in out


def test_run_over_a_jsonl_file_prints_json_lines_and_records_each_call(
    project, emulator, capsys, tmp_path
):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps({**EMAIL, "subject": f"s{i}"}) for i in range(5)))
    emulator.default = ok(GOOD)
    code, out, _ = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--input", str(inputs), "--json"
    )
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["line"] for r in lines] == [1, 2, 3, 4, 5]
    assert {r["status"] for r in lines} == {"pending_review"}
    code, out, _ = smallops(capsys, "-p", str(project), "logs", "--json")
    assert {json.loads(line)["id"] for line in out.splitlines()} == {r["run_id"] for r in lines}


def test_a_bad_jsonl_line_stops_before_any_call_naming_the_line(
    project, emulator, capsys, tmp_path
):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps(EMAIL) + "\n{not json}\n")
    code, _, err = smallops(capsys, "-p", str(project), "run", "email-triage", "-i", str(inputs))
    assert code == 2 and "line 2" in err and "not valid JSON" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert emulator.requests == []
    assert smallops(capsys, "-p", str(project), "logs", "--json")[1] == ""


def test_line_and_paragraph_separators_inside_a_jsonl_string_stay_in_the_input(
    project, emulator, capsys, tmp_path
):
    """Lines end at \\n (or \\r\\n) only: U+2028/U+2029 are valid inside a JSON string."""
    subjects = ["Invoice\u2028May", "Refund\u2029June"]
    inputs = tmp_path / "in.jsonl"
    lines = [json.dumps({**EMAIL, "subject": s}, ensure_ascii=False) for s in subjects]
    inputs.write_bytes("\r\n".join(lines).encode())
    assert "\u2028" in inputs.read_text(encoding="utf-8")  # raw, not escaped
    emulator.default = ok(GOOD)
    code, out, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "-i", str(inputs), "--json"
    )
    assert code == 0, err
    run_ids = [json.loads(line)["run_id"] for line in out.splitlines()]
    recorded = []
    for run_id in run_ids:
        _, out, _ = smallops(capsys, "-p", str(project), "show", run_id, "--json")
        recorded.append(json.loads(out)["inputs"]["subject"])
    assert recorded == subjects


@pytest.mark.parametrize("depth", [100, 100_000])  # lists inside the object: 101+ levels
@pytest.mark.parametrize("where", ["line", "--json"])
def test_deeply_nested_json_input_is_one_line_and_exit_2(
    project, emulator, capsys, tmp_path, depth, where
):
    """Nesting past 100 levels (or past Python's recursion limit) is refused before any call."""
    deep = json.dumps({**EMAIL, "body": "x"})[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}"
    if where == "line":
        inputs = tmp_path / "in.jsonl"
        inputs.write_text(json.dumps(EMAIL) + "\n" + deep + "\n")
        args = ("-i", str(inputs))
    else:
        args = ("--json", deep)
    code, _, err = smallops(capsys, "-p", str(project), "run", "email-triage", *args)
    assert code == 2 and "nest more than 100 levels deep" in err, err
    assert ("line 2" in err) if where == "line" else ("--json" in err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert emulator.requests == []
    assert smallops(capsys, "-p", str(project), "logs", "--json")[1] == ""


@pytest.mark.parametrize("where", ["line", "--json"])
def test_a_number_too_long_for_python_is_one_line_naming_the_place_and_exit_2(
    project, emulator, capsys, tmp_path, where
):
    """An integer of 5001 digits (more than int() converts) is refused before any call."""
    huge = json.dumps({**EMAIL, "body": "x"})[:-1] + ', "n": 1' + "0" * 5000 + "}"
    if where == "line":
        inputs = tmp_path / "in.jsonl"
        inputs.write_text(json.dumps(EMAIL) + "\n" + huge + "\n")
        args = ("-i", str(inputs))
    else:
        args = ("--json", huge)
    code, _, err = smallops(capsys, "-p", str(project), "run", "email-triage", *args)
    assert code == 2 and "a number has 5001 digits, more than the 4300 allowed" in err, err
    assert ("line 2" in err) if where == "line" else ("--json" in err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert emulator.requests == []
    assert smallops(capsys, "-p", str(project), "logs", "--json")[1] == ""


def test_json_input_nested_100_levels_is_accepted(project, emulator, capsys):
    nested = json.dumps({**EMAIL, "extra": json.loads("[" * 99 + "]" * 99)})
    emulator.default = ok(GOOD)
    code, _, err = smallops(capsys, "-p", str(project), "run", "email-triage", "--json", nested)
    assert code == 0, err


def test_a_missing_template_variable_is_a_usage_error_before_any_call(project, emulator, capsys):
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", '{"subject": "hi"}'
    )
    assert code == 2 and "'body'" in err and "needs: body, sender, subject" in err
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('"openai:gpt-4o-mini-2024-07-18"', '"openai:gpt-4o-mini"'), "moving alias"),
        (('    fallback="review",\n', ""), "declares no fallback"),
        (('prompt="email_triage.prompt"', 'prompt="nope.prompt"'), "does not exist"),
        (("from smallops import Workflow", "from smallops import Workflow, Nope"), "ImportError"),
        (('    "email-triage",', '    "email-triage\\n",'), "is not valid"),
    ],
)
def test_a_misconfigured_workflow_is_one_line_and_exit_2(project, capsys, edit, message):
    path = project / "workflows" / "email_triage.py"
    path.write_text(path.read_text().replace(*edit))
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    assert code == 2 and message in err and "email_triage.py" in err
    assert len(err.strip().splitlines()) == 1


def _assert_refused_before_anything(code, err, emulator, *sources):
    """Exit 2, one "error: ..." line naming the setting to fix, no call and no log written."""
    assert code == 2 and err.startswith("error: "), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert all(source in err for source in sources), err
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("redis_url = 5", "redis_url in smallops.toml must be a Redis URL"),
        ('redis_url = "http://127.0.0.1:6379/0"', "redis_url in smallops.toml is not a Redis"),
        ("database_url = 5", "database_url in smallops.toml must be a database URL"),
        ('database_url = "::"', "database_url in smallops.toml is not a valid database URL"),
        (
            'database_url = "sqlite:///log\\u0000.db"',
            "database_url in smallops.toml contains a NUL character",
        ),
        (
            'database_url = "postgresql://127.0.0.1/test\\u0000x"',
            "database_url in smallops.toml contains a NUL character",
        ),
        (
            '[providers.local]\nkind = "openai"\nbase_url = 5',
            "[providers.local] base_url in smallops.toml must be an http:// or https:// URL",
        ),
        (
            '[providers.local]\nkind = "openai"\napi_key_env = 5',
            "[providers.local] api_key_env in smallops.toml must name an environment variable",
        ),
        ("[providers.local]\nkind = 5", "[providers.local] in smallops.toml has kind 5"),
    ],
)
def test_a_setting_of_the_wrong_type_names_its_key_in_smallops_toml(
    project, emulator, capsys, toml, message
):
    path = project / "smallops.toml"
    text = path.read_text().replace('database_url = "sqlite:///.smallops/smallops.db"\n', "")
    key_of_smallops = not toml.startswith("[")
    path.write_text(
        text.replace("[smallops]\n", f"[smallops]\n{toml}\n")
        if key_of_smallops
        else f"{text}\n{toml}\n"
    )
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    _assert_refused_before_anything(code, err, emulator, message)
    assert not (project / ".smallops").exists()


@pytest.mark.parametrize(
    ("toml", "message", "hint"),
    [
        ("[smallops]\nwrite_timout = 3", "[smallops] in smallops.toml has an unknown key "
         "'write_timout'", "did you mean write_timeout?"),
        ('[providers.local]\nkind = "openai"\nbase_ur = "http://127.0.0.1:1/v1"',
         "[providers.local] in smallops.toml has an unknown key 'base_ur'",
         "did you mean base_url?"),
        ('[prices."openai:gpt-4o-mini-2024-07-18"]\ninput = 1\noutput = 2\ncache_input = 0.5',
         "has an unknown key 'cache_input'", "did you mean cached_input?"),
        ("[smalops]\nredis_url = 1", "smallops.toml has an unknown table [smalops]",
         "did you mean [smallops]?"),
        ("[alert]\nslack = 1", "smallops.toml has an unknown table [alert]",
         "did you mean [alerts]?"),
        ("[alerts]\nslack = 1", "[alerts] in smallops.toml has an unknown key 'slack'",
         "known keys: dashboard_url"),
        ('[alerts.channels.pager]\nkind = "pagerduty"\nrouting_key = "k"',
         "[alerts.channels.pager] in smallops.toml has an unknown key 'routing_key'",
         "did you mean routing_key_env?"),
    ],
)  # fmt: skip
def test_an_unknown_table_or_key_in_smallops_toml_is_refused_with_the_closest_known_one(
    project, emulator, capsys, toml, message, hint
):
    """A typo in smallops.toml is never silently ignored: exit 2 naming it, nothing written."""
    path = project / "smallops.toml"
    text = path.read_text()
    path.write_text(
        text.replace("[smallops]\n", toml + "\n") if toml.startswith("[smallops]") else
        f"{text}\n{toml}\n"
    )  # fmt: skip
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    _assert_refused_before_anything(code, err, emulator, message, hint)
    assert not (project / ".smallops").exists()


def test_a_key_of_smallops_above_every_table_says_where_it_belongs(project, emulator, capsys):
    path = project / "smallops.toml"
    path.write_text("write_timeout = 3\n" + path.read_text())
    code, _, err = smallops(capsys, "-p", str(project), "logs")
    _assert_refused_before_anything(
        code, err, emulator, "has a key 'write_timeout' outside any table", "under [smallops]"
    )


@pytest.mark.parametrize(
    "price",
    [
        "input = -0.01\noutput = 0.6",
        "input = 0.15\noutput = nan",
        "input = inf\noutput = 0.6",
        "input = 0.15\noutput = 0.6\ncached_input = -inf",
        "input = true\noutput = 0.6",
        'input = "0.15"\noutput = 0.6',
    ],
)
def test_a_negative_nan_or_infinite_price_is_refused(project, emulator, capsys, price):
    path = project / "smallops.toml"
    path.write_text(path.read_text() + f'\n[prices."openai:gpt-4o-mini-2024-07-18"]\n{price}\n')
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    _assert_refused_before_anything(
        code, err, emulator, '[prices."openai:gpt-4o-mini-2024-07-18"] in smallops.toml'
    )
    assert "zero or more (not NaN or infinite)" in err
    assert not (project / ".smallops").exists()


def test_a_smallops_toml_that_is_not_utf8_is_one_line(project, emulator, capsys):
    path = project / "smallops.toml"
    path.write_bytes(path.read_bytes() + b"\n# caf\xe9\n")
    code, _, err = smallops(capsys, "-p", str(project), "logs")
    _assert_refused_before_anything(code, err, emulator, "smallops.toml is not UTF-8 text")
    assert not (project / ".smallops").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "SMALLOPS_REDIS_URL is not a Redis URL (scheme 'http')"),
        ("rediss:/x", "SMALLOPS_REDIS_URL names no Redis host"),
        ("127.0.0.1:6379", "SMALLOPS_REDIS_URL is not a Redis URL"),
        ("redis://:hunter2-secret@127.0.0.1:port/0", "SMALLOPS_REDIS_URL is not a valid URL"),
    ],
)
def test_a_bad_redis_url_names_the_variable_and_never_echoes_it(
    project, emulator, capsys, monkeypatch, url, message
):
    monkeypatch.setenv("SMALLOPS_REDIS_URL", url)
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    _assert_refused_before_anything(code, err, emulator, message)
    assert "hunter2" not in err and "redis://host:6379/0" in err
    assert not (project / ".smallops").exists()


@pytest.mark.parametrize("where", ["env", "toml"])
@pytest.mark.parametrize(
    "path",
    [
        "/proc/smallops-nowhere/log.db",  # a folder that cannot be created
        "/proc/log.db",  # a folder nobody may add a file to
        "{project}/smallops.toml/log.db",  # a "folder" that is a file
    ],
)
def test_an_unwritable_sqlite_path_names_where_it_was_set(
    project, emulator, capsys, monkeypatch, where, path
):
    path = path.format(project=project)
    if where == "env":
        monkeypatch.setenv("SMALLOPS_DATABASE_URL", f"sqlite:///{path}")
    else:
        toml = project / "smallops.toml"
        toml.write_text(
            toml.read_text().replace("sqlite:///.smallops/smallops.db", f"sqlite:///{path}")
        )
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    source = "SMALLOPS_DATABASE_URL" if where == "env" else "database_url in smallops.toml"
    _assert_refused_before_anything(code, err, emulator, f"cannot write the log database {path}")
    assert f"point {source} at a file in a folder you can write to" in err
    assert not Path(path).exists() and not (project / ".smallops").exists()


def test_unknown_workflow_lists_the_known_ones(project, capsys):
    code, _, err = smallops(capsys, "-p", str(project), "run", "lead-scoring", "--json", "{}")
    assert code == 2 and "known workflows: email-triage" in err


def test_a_missing_api_key_is_a_usage_error(project, capsys, monkeypatch, emulator):
    monkeypatch.delenv("OPENAI_API_KEY")
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    assert code == 2 and "OPENAI_API_KEY is not set" in err and emulator.requests == []


def test_outside_a_project_says_how_to_make_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = smallops(capsys, "logs")
    assert code == 2 and "smallops init" in err


def test_logs_show_and_report(project, emulator, capsys, database_url, monkeypatch):
    """On SQLite and on Postgres."""
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    emulator.script(ok(GOOD), status(400, message="bad request"))
    for _ in range(2):
        smallops(capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL))
    code, out, _ = smallops(capsys, "-p", str(project), "logs")
    assert code == 0 and "pending_review" in out and "queued_for_human" in out
    code, out, _ = smallops(capsys, "-p", str(project), "logs", "--status", "bad_request", "--json")
    [failed] = [json.loads(line) for line in out.splitlines()]
    assert failed["error_type"] == "bad_request"
    code, out, _ = smallops(capsys, "-p", str(project), "show", failed["id"])
    assert code == 0 and "HTTP 400" in out and "Where is my May" in out
    assert "[system]" not in out  # the prompt only with --prompt
    code, out, _ = smallops(capsys, "-p", str(project), "show", failed["id"], "--prompt")
    assert code == 0 and "[system]" in out and "message: user" in out
    code, out, _ = smallops(capsys, "-p", str(project), "show", failed["id"], "--json")
    record = json.loads(out)
    assert record["prompt"]["template"].startswith("{#") and len(record["attempts"]) == 1
    code, out, _ = smallops(capsys, "-p", str(project), "report", "--json")
    [row] = json.loads(out)
    assert row["calls"] == 2 and row["statuses"] == {"pending_review": 1, "queued_for_human": 1}
    assert row["errors"] == {"bad_request": 1}
    assert row["models_served"] == {"gpt-4o-mini-2024-07-18": 1} and row["cost_usd"] > 0
    code, out, _ = smallops(capsys, "-p", str(project), "report")
    assert code == 0 and "email-triage" in out and "p50" in out


def test_show_an_unknown_run_is_a_clear_error(project, capsys):
    code, _, err = smallops(capsys, "-p", str(project), "show", "01234567-nope")
    assert code == 1 and "no run" in err


def test_a_bad_since_is_a_usage_error(project, capsys):
    code, _, err = smallops(capsys, "-p", str(project), "logs", "--since", "last tuesday")
    assert code == 2 and "--since" in err


@pytest.mark.parametrize(
    "args",
    [
        ("logs", "--since", "99999999d"),
        ("logs", "--since", "99999999999999w"),
        ("report", "--since", "99999999d"),
        ("prune", "--older-than", "99999999d"),
    ],
)
def test_a_span_reaching_before_the_year_1_is_one_line_and_exit_2(project, emulator, capsys, args):
    """A span no date can be that far back is refused, not an OverflowError; prune prunes
    nothing."""
    emulator.script(ok(GOOD))
    _, out, _ = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL), "--json"
    )
    run_id = json.loads(out)["run_id"]
    code, _, err = smallops(capsys, "-p", str(project), *args)
    assert code == 2 and f"{args[1]} {args[2]!r} reaches back before the year 1" in err, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    _, out, _ = smallops(capsys, "-p", str(project), "show", run_id, "--json")
    assert json.loads(out)["inputs"] == EMAIL


@pytest.mark.parametrize("command", [("logs",), ("review", "list")])
@pytest.mark.parametrize("limit", ["99999999999999999999", "1000001", "0"])
def test_a_limit_out_of_range_is_a_usage_error_on_every_database(
    project, capsys, database_url, monkeypatch, command, limit
):
    """-n is bounded (1 to 1,000,000) before any query: no OverflowError on SQLite, no
    NumericValueOutOfRange from Postgres."""
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    code, _, err = smallops(capsys, "-p", str(project), *command, "-n", limit)
    errors = [line for line in err.splitlines() if line.lower().startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "Invalid value for '--limit'" in errors[0] and "database" not in err
    assert smallops(capsys, "-p", str(project), *command, "-n", "1000000")[0] == 0


def test_db_upgrade_and_current(project, capsys):
    from smallops.storage.db import head_revision

    code, out, _ = smallops(capsys, "-p", str(project), "db", "upgrade")
    assert code == 0 and "upgraded empty" in out
    code, out, _ = smallops(capsys, "-p", str(project), "db", "upgrade")
    assert "already at" in out
    code, out, _ = smallops(capsys, "-p", str(project), "db", "current")
    assert code == 0 and f"at {head_revision()}" in out and head_revision() == "0013"


def test_an_unreachable_database_is_one_line_and_exit_1(project, capsys, monkeypatch):
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    code, _, err = smallops(capsys, "-p", str(project), "logs")
    assert code == 1 and "cannot open the log database" in err and "Traceback" not in err


def test_demo_runs_offline_with_no_key(tmp_path):
    """The README's first command: the installed console script, no key, no network."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    script = Path(sys.executable).parent / "smallops"
    done = subprocess.run(
        [str(script), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "30 calls" in done.stdout and "Try next" in done.stdout
    report = subprocess.run(
        [str(script), "report", "--json"],
        cwd=tmp_path / "smallops-demo",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    [row] = json.loads(report.stdout)
    assert row["calls"] == 30 and row["statuses"]["queued_for_human"] == 3
    assert set(row["errors"]) == {"refused", "truncated", "server_error"}


def test_run_accepts_an_eval_file_as_input(project, emulator, capsys):
    emulator.default = ok(GOOD)
    code, out, _ = smallops(
        capsys,
        "-p",
        str(project),
        "run",
        "email-triage",
        "--input",
        str(project / "evals" / "email_triage.jsonl"),
        "--json",
    )
    cases = (project / "evals" / "email_triage.jsonl").read_text().strip().splitlines()
    assert code == 0 and len(out.splitlines()) == len(cases) >= 20
    assert emulator.requests[0].body["messages"][1]["content"].startswith("From: ")


def test_logs_since_filters_by_time(project, emulator, capsys):
    smallops(capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL))
    assert (
        len(smallops(capsys, "-p", str(project), "logs", "--since", "1h", "--json")[1].splitlines())
        == 1
    )
    assert smallops(capsys, "-p", str(project), "logs", "--since", "2999-01-01", "--json")[1] == ""
