"""The fault suite, secrets: a key that a provider echoes back is found nowhere we write."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import inspect, text

from conftest import smallops
from emulators import ok, respond, status
from faultkit import GOOD, database_down, engine_of, refuse_poison
from webhook_receiver import Receiver

# A key whose variable's name does not look secret, and whose value matches no key pattern:
# only the configured api_key_env tells the redactor about it.
CANARY = "acme-canary-7f3c9e2b1d5a"
KEY_ENV = "ACME_LLM_AUTH"
WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"


def echoing_model(body: dict, headers: dict) -> object:
    """An endpoint that repeats the caller's key: in a 401 message, and in a success's
    fingerprint, request-id header and output."""
    key = headers.get("authorization", "").removeprefix("Bearer ")
    said = " ".join(str(m.get("content")) for m in body.get("messages", []))
    if "#auth" in said:
        return status(401, message=f"Incorrect API key provided: {key}. Check your key.")
    if "#echo" in said:
        return ok({**GOOD, "summary": f"Your key is {key}"}, fingerprint=key, request_id=key)
    return ok(GOOD)


def _project_with_custom_key(project: Path, hook_url: str) -> None:
    toml = project / "smallops.toml"
    toml.write_text(toml.read_text() + f'api_key_env = "{KEY_ENV}"\n')
    module = project / "workflows" / "email_triage.py"
    module.write_text(
        module.read_text().replace(
            'owner="ops@example.com",', f'owner="ops@example.com",\n    webhook="{hook_url}",'
        )
    )


def _inputs(path: Path, *bodies: str) -> Path:
    lines = [
        json.dumps({"sender": "c@x.example", "subject": f"s{i}", "body": body})
        for i, body in enumerate(bodies)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _database_text(url: str, root: Path) -> str:
    """Every row of every table, as text."""
    engine = engine_of(url, root)
    dump = []
    with engine.connect() as connection:
        for table in inspect(engine).get_table_names():
            for row in connection.execute(text(f"SELECT * FROM {table}")):
                dump.append(repr(tuple(row)))
    return "\n".join(dump)


def test_an_echoed_key_reaches_no_record_spool_quarantine_output_or_webhook(
    project, emulator, database_url, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, CANARY)
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    monkeypatch.setenv("SMALLOPS_WEBHOOK_SECRET", WEBHOOK_SECRET)
    emulator.default = respond(echoing_model)
    seen: list[str] = []

    def cli(*args: str) -> tuple[int, str]:
        code, out, err = smallops(capsys, "-p", str(project), *args)
        seen.append(out + err)
        return code, out

    with Receiver() as receiver:
        _project_with_custom_key(project, receiver.url)
        engine_of(database_url, project)
        inputs = _inputs(tmp_path / "in.jsonl", "#auth", "#echo", "plain", "#echo again")
        code, out = cli("run", "email-triage", "-i", str(inputs), "--json")
        assert code == 0
        results = [json.loads(line) for line in out.splitlines()]
        assert [r["status"] for r in results][:2] == ["queued_for_human", "pending_review"]
        echoed = results[1]["run_id"]
        assert cli("review", "approve", echoed, "--reviewer", "ann")[0] == 0
        assert cli("review", "deliver")[0] == 0
        for args in (
            ["show", echoed],
            ["show", echoed, "--json"],
            ["show", results[0]["run_id"], "--json"],
            ["logs", "--json"],
            ["review", "list", "--state", "all", "--json"],
            ["review", "export", "email-triage", "--to", str(tmp_path / "export.jsonl")],
        ):
            assert cli(*args)[0] == 0, args
        cases = [
            {
                "id": f"echo-{i}",
                "input": {"sender": "a@x.example", "subject": "s", "body": f"#echo {i}"},
                "expected": {"summary": "nope"},
            }
            for i in range(3)
        ]
        (project / "evals" / "email_triage.jsonl").write_text(
            "\n".join(json.dumps(case) for case in cases) + "\n"
        )
        junit, markdown = tmp_path / "results.xml", tmp_path / "summary.md"
        for args in (["--json"], ["--junit", str(junit), "--markdown", str(markdown)]):
            code, _ = cli("eval", "email-triage", "--no-cache", *args)
            assert code in (0, 1), code
        refuse_poison(engine_of(database_url, project))
        cli("run", "email-triage", "-i", str(_inputs(tmp_path / "p.jsonl", "#echo poison")))
        with monkeypatch.context() as patch:  # the database goes down: the spool keeps runs
            database_down(patch)
            code, _ = cli("run", "email-triage", "-i", str(_inputs(tmp_path / "d.jsonl", "#echo")))
            assert code == 3
            spooled = b"".join(p.read_bytes() for p in project.rglob("spool/*/*.jsonl"))
        deliveries = receiver.accepted
    assert spooled and deliveries
    quarantined = b"".join(p.read_bytes() for p in project.rglob("quarantine/*/*.jsonl"))
    assert quarantined
    exported = (tmp_path / "export.jsonl").read_text()
    reports = junit.read_text() + markdown.read_text()
    places = {
        "the database": _database_text(database_url, project),
        "the spool": spooled.decode(),
        "the quarantine": quarantined.decode(),
        "command output": "\n".join(seen),
        "the exported eval set": exported,
        "webhook payloads": json.dumps(deliveries),
        "eval reports": reports,
    }
    if database_url.startswith("sqlite"):
        db_file = Path(database_url.removeprefix("sqlite:///"))
        places["the database file"] = b"".join(
            p.read_bytes() for p in db_file.parent.glob(db_file.name + "*")
        ).decode("latin-1")
    leaks = [where for where, found in places.items() if CANARY in found]
    assert not leaks, f"the key leaked into {', '.join(leaks)}"
    assert "[REDACTED]" in places["the database"]


def test_the_key_of_a_provider_built_in_code_is_masked_too(tmp_path, emulator, monkeypatch):
    """No smallops.toml names the variable: the provider registers the key it sends."""
    from smallops import Settings, Workflow
    from smallops.providers.openai import OpenAIProvider
    from smallops.testing import recorded_runs

    from models import Triage

    monkeypatch.setenv("ACME_LIB_CRED", CANARY)
    emulator.default = respond(echoing_model)
    (tmp_path / "p.prompt").write_text("[user]\n{{ text }}")
    wf = Workflow(
        "in-code",
        model="openai:gpt-4o-mini-2024-07-18",
        prompt="p.prompt",
        output=Triage,
        fallback="review",
        provider=OpenAIProvider(
            "acme", base_url=emulator.openai_base_url, api_key_env="ACME_LIB_CRED"
        ),
        settings=Settings(root=tmp_path, database_url=f"sqlite:///{tmp_path / 'log.db'}"),
        base_dir=tmp_path,
    )
    wf.run(text="#echo")
    wf.run(text="#auth")
    recorded = json.dumps(recorded_runs(wf), default=str)
    assert CANARY not in recorded and "[REDACTED]" in recorded
