"""`smallops secrets check`, key health in `smallops status`, and references in smallops.toml
that are refused (a pasted key most of all) without being repeated."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from smallops import ConfigError, Settings

from conftest import EMAIL, smallops
from emulators import respond
from keyscript import KeyScript, provider_accepting


def new_key() -> str:
    return "acme-" + secrets.token_hex(16)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


def add(project: Path, text: str) -> None:
    toml = project / "smallops.toml"
    toml.write_text(toml.read_text() + text)


def test_secrets_check_says_where_each_key_lives_and_never_prints_one(
    project, tmp_path, capsys, monkeypatch, aws_env
):
    monkeypatch.setenv("COLUMNS", "80")
    aws_key, local_key = new_key(), new_key()
    local = KeyScript(tmp_path / "local", local_key)
    broken = KeyScript(tmp_path / "broken", new_key())
    broken.set(mode="leak")  # prints its key on stdout and stderr, and fails
    add(project, 'api_key = "aws-sm:prod/openai#api_key"\n')
    add(project, f"[providers.local]\nkind = 'openai'\napi_key = '{local.reference}'\n")
    add(project, f"[providers.team]\nkind = 'anthropic'\napi_key = '{broken.reference}'\n")
    add(project, "[providers.claude]\nkind = 'anthropic'\n")
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        client.create_secret(Name="prod/openai", SecretString=json.dumps({"api_key": aws_key}))
        version = client.describe_secret(SecretId="prod/openai")["VersionIdsToStages"]
        code, out, err = smallops(capsys, "-p", str(project), "secrets", "check")
        assert code == 1, err
        lines = out.splitlines()
        assert all(len(line) <= 80 for line in lines[:6]), out  # the table; messages wrap
        rows = {line.split()[0]: line for line in lines[1:5]}
        assert set(rows) == {"claude", "local", "openai", "team"}
        assert " ok" in rows["claude"] and "env:ANTHROPIC_API_KEY" in rows["claude"]
        assert "aws-sm:prod/openai#api_key" in rows["openai"] and " ok " in rows["openai"]
        assert next(iter(version))[:8] in rows["openai"] and "ago" in rows["openai"]
        assert "FAILED" in rows["team"] and "command:" in rows["team"]
        assert "not shown at this width: store" in out  # the reference names it
        assert "✗ team: command:" in out and "exited with status 2" in out
        assert "3 of 4 keys can be had" in out
        code, out_json, _ = smallops(capsys, "-p", str(project), "secrets", "check", "--json")
    assert code == 1
    checks = {c["provider"]: c for c in map(json.loads, out_json.splitlines())}
    assert checks["openai"]["ok"] and checks["openai"]["version"] in version
    assert checks["openai"]["workflows"] == ["email-triage"]
    assert checks["openai"]["source"] == "[providers.openai] in smallops.toml"
    assert checks["openai"]["store"] == "AWS Secrets Manager" and checks["openai"]["updated_at"]
    assert checks["claude"]["reference"] == "env:ANTHROPIC_API_KEY"
    assert checks["claude"]["source"] == "the default"
    assert not checks["team"]["ok"] and "exited with status 2" in checks["team"]["problem"]
    assert checks["team"]["hint"] == "run the command yourself to see why"
    everything = out + err + out_json
    assert aws_key not in everything and local_key not in everything
    assert broken.key not in everything


def test_a_provider_made_in_a_workflows_code_is_said_to_be_set_there(project, capsys):
    """Named like a built-in ("openai"), but made in the code with its own key: its key is
    not "the default", nor smallops.toml's."""
    module = project / "workflows" / "email_triage.py"
    text = module.read_text().replace(
        "from smallops import Workflow",
        "from smallops import Workflow\nfrom smallops.providers.openai import OpenAIProvider",
    )
    made = 'review="all",\n    provider=OpenAIProvider(api_key="env:TEAM_OPENAI_KEY"),'
    module.write_text(text.replace('review="all",', made))
    _, out, err = smallops(capsys, "-p", str(project), "secrets", "check", "--json")
    [check] = [json.loads(line) for line in out.splitlines()]
    assert check["reference"] == "env:TEAM_OPENAI_KEY", err
    assert check["source"] == "the workflow's code"


def test_secrets_check_exits_0_when_every_key_can_be_had(project, capsys, tmp_path):
    store = KeyScript(tmp_path / "store", new_key())
    add(project, f"api_key = '{store.reference}'\n")
    code, out, _ = smallops(capsys, "-p", str(project), "secrets", "check")
    assert code == 0 and "1 of 1 keys can be had; none was printed" in out
    assert store.key not in out


def test_a_problem_is_printed_as_written_never_as_emoji(project, capsys, monkeypatch):
    """`doppler:X: ...` once printed as `doppler❌ ...`: text from references and stores is
    never read for :emoji: codes."""
    monkeypatch.delenv("DOPPLER_TOKEN", raising=False)
    add(project, "[providers.d]\nkind = 'openai'\napi_key = 'doppler:X'\n")
    code, out, _ = smallops(capsys, "-p", str(project), "secrets", "check")
    assert code == 1 and "doppler:X: DOPPLER_TOKEN is not set" in out and "❌" not in out


def test_a_keyless_server_needs_no_key_and_a_missing_env_key_fails(project, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    add(project, "[providers.ollama]\nkind = 'openai'\nbase_url = 'http://127.0.0.1:9/v1'\n")
    code, out, _ = smallops(capsys, "-p", str(project), "secrets", "check", "--json")
    checks = {c["provider"]: c for c in map(json.loads, out.splitlines())}
    assert checks["ollama"]["ok"] and checks["ollama"]["keyless"]
    assert not checks["openai"]["ok"] and checks["openai"]["problem"] == (
        "OPENAI_API_KEY is not set"
    )
    assert code == 1


def test_a_broken_workflow_module_fails_the_check_and_the_rest_is_checked(project, capsys):
    (project / "workflows" / "broken.py").write_text("raise RuntimeError('half written')\n")
    code, out, err = smallops(capsys, "-p", str(project), "secrets", "check")
    assert "error: workflows/broken.py" in err and "not checked" in err
    assert code == 1 and "1 of 1 keys can be had" in out  # the workflows that load are


def test_status_shows_how_a_store_key_fares_and_nothing_for_an_env_key(
    project, capsys, tmp_path, emulator
):
    store = KeyScript(tmp_path / "store", new_key())
    emulator.default = respond(provider_accepting(lambda: store.key))
    code, out, _ = smallops(capsys, "-p", str(project), "status", "--json")
    assert json.loads(out.splitlines()[0])["key"] is None  # env:OPENAI_API_KEY
    add(project, f"api_key = '{store.reference}'\n")
    code, out, _ = smallops(capsys, "-p", str(project), "status", "--json")
    assert json.loads(out.splitlines()[0])["key"]["state"] == "not fetched yet"
    code, _, err = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    assert code == 0, err
    code, out, _ = smallops(capsys, "-p", str(project), "status", "--json")
    key = json.loads(out.splitlines()[0])["key"]
    assert key["state"] == "ok" and key["last_ok_at"] and key["problem"] is None
    code, out, _ = smallops(capsys, "-p", str(project), "status")
    assert f"key       {store.reference}: last fetched" in out
    assert store.key not in out


def test_status_reads_a_malformed_health_file_without_a_traceback(project, capsys):
    """Health files are read from a shared folder (another version's, one edited by hand):
    what is not the right type is left out, never a traceback."""
    import time

    reference = "command:./bin/key"
    add(project, f"api_key = '{reference}'\n")
    folder = project / ".smallops" / "secrets"
    folder.mkdir(parents=True)
    odd = {"last_ok_at": "yesterday", "problem": ["x"], "serving_until": 1e300, "fetches": "2"}
    for pid, report in ((998, {"last_ok_at": time.time() - 60}), (999, odd)):
        state = {"pid": pid, "updated_at": time.time(), "references": {reference: report}}
        (folder / f"keys-{pid}.json").write_text(json.dumps(state))
    code, out, err = smallops(capsys, "-p", str(project), "status")
    assert code == 0, err
    assert f"key       {reference}: last fetched" in out


# -- references refused -----------------------------------------------------------------------


def _pasted() -> list[tuple[str, str]]:
    """(a line of [providers.openai], the key in it) for each way a key gets pasted."""
    hexed, upper = secrets.token_hex(20), secrets.token_hex(8).upper()
    shapes = [
        f'api_key = "{hexed}"',  # the key itself, no scheme
        f'api_key = "sk-proj-{hexed}"',
        f'api_key = "env:{hexed}"',  # the key where its variable's name goes
        f'api_key = "env:sk-{hexed}"',
        f'api_key = "aws-sm:AKIA{upper}"',
        f'api_key_env = "{hexed}"',
        f'api_key_env = "sk-{hexed}"',
    ]
    return [(shape, shape.split('"')[1].split(":")[-1]) for shape in shapes]


@pytest.mark.parametrize(("line", "key"), _pasted())
def test_a_pasted_key_is_refused_and_never_repeated(tmp_path, capsys, line, key):
    (tmp_path / "smallops.toml").write_text(f"[providers.openai]\n{line}\n")
    with pytest.raises(ConfigError) as refused:
        Settings.load(tmp_path, env={})
    assert key not in str(refused.value)
    code, out, err = smallops(capsys, "-p", str(tmp_path), "secrets", "check")
    assert code == 2 and err.startswith("error: [providers.openai] api_key")
    assert len(err.strip().splitlines()) == 1 and key not in out + err


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_key_pasted_as_api_key_env_in_code_is_refused_unrepeated(kind):
    """A provider made in code is checked as smallops.toml is: the key, given where its
    variable's name goes, was repeated by every "is not set; export KEY=..." message."""
    from smallops.providers.anthropic import AnthropicProvider
    from smallops.providers.openai import OpenAIProvider

    provider = {"openai": OpenAIProvider, "anthropic": AnthropicProvider}[kind]
    key = secrets.token_hex(20)
    with pytest.raises(ConfigError, match="api_key_env of provider") as refused:
        provider(api_key_env=key)
    assert key not in str(refused.value)
    assert provider(api_key_env="TEAM_KEY").keys.ref.path == "TEAM_KEY"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"aws:prod/openai"', "is not a secret reference"),  # a scheme that is not one
        ('"vault"', "is not a secret reference"),
        ('"aws-sm:"', "names the aws-sm store but no secret"),
        ('"command:pass \'unbalanced"', "cannot be split into words"),
        ('"env:OPENAI_API_KEY\\nX"', "line break or a control character"),
        ('"env:MY KEY"', "must name an environment variable"),
        ("5", "must be a secret reference string"),
        ('"env:OPENAI_API_KEY#field"', "names a #field of an environment variable"),
        ('"op://Private/OpenAI#credential"', "names its field in its path"),
        (f'"vault:secret/{"x/" * 600}#f"', "characters long, not a secret reference"),
        # a path the HTTP library resolves reads another resource: Vault's sys/ API here
        ('"vault:secret/../../sys/policy/root#f"', "has a . or .. segment"),
        ('"vault:secret/openai?version=1#api_key"', "in its path: the vault store"),
        ('"vault:secret/%2e%2e/openai#api_key"', "in its path: the vault store"),
        ('"gcp-sm:my-project/openai-key#.."', "has a . or .. segment"),
    ],
)
def test_a_bad_reference_says_what_is_wrong(tmp_path, value, message):
    (tmp_path / "smallops.toml").write_text(f"[providers.openai]\napi_key = {value}\n")
    with pytest.raises(ConfigError, match=message):
        Settings.load(tmp_path, env={})


@pytest.mark.parametrize(
    "option", ["--token={}", "--token {}", "--client-secret={}", "-api-key {}"]
)
def test_a_command_given_a_credential_on_its_command_line_is_refused_unrepeated(tmp_path, option):
    """The reference is in every message, status and log row that names it: a credential in
    it would be too (and in `ps`)."""
    token = "hvs." + secrets.token_hex(12)
    command = "vault-helper " + option.format(token) + " get openai"
    (tmp_path / "smallops.toml").write_text(f"[providers.openai]\napi_key = 'command:{command}'\n")
    with pytest.raises(ConfigError, match="a credential on its command line") as refused:
        Settings.load(tmp_path, env={})
    assert token not in str(refused.value)
    fine = "aws secretsmanager get-secret-value --secret-id prod/openai --output text"
    others = [
        "vault kv get -field=api_key secret/openai",
        "gcloud secrets versions access latest --secret=openai-key --project acme",
        "tool --token-file t --no-password",
    ]
    for command in (fine, *others):
        (tmp_path / "smallops.toml").write_text(
            f"[providers.openai]\napi_key = 'command:{command}'\n"
        )
        Settings.load(tmp_path, env={})


def test_every_store_has_a_scheme_and_references_read_back_as_written(tmp_path):
    references = [
        "env:OPENAI_API_KEY",
        "aws-sm:prod/openai#api_key",
        "aws-sm:arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/openai-AbCdEf",
        "vault:secret/openai#api_key",
        "gcp-sm:my-project/openai-key#3",
        "op://Private/OpenAI/credential",
        "doppler:OPENAI_API_KEY",
        "command:pass show openai",
    ]
    lines = [
        f'[providers.p{i}]\nkind = "openai"\napi_key = "{r}"' for i, r in enumerate(references)
    ]
    (tmp_path / "smallops.toml").write_text("\n".join(lines) + "\n")
    providers = Settings.load(tmp_path, env={}).providers
    assert [str(providers[f"p{i}"].api_key) for i in range(len(references))] == references
    assert providers["p1"].api_key is not None and providers["p1"].api_key.field == "api_key"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("cache_ttl = -1", "must be a number of seconds"),
        ("fetch_timeout = 0", "must be a number of seconds"),
        ("max_stale = 'an hour'", "must be a number of seconds"),
        ("fetch_timeout = 1e12", "at most 3,600"),  # was a traceback from the thread's wait
        ("max_stale = 1e300", "at most 31,536,000"),
        ("cache_tll = 60", "cache_ttl"),  # a typo names the key it meant
    ],
)
def test_bad_secrets_settings_are_refused(tmp_path, table, message):
    (tmp_path / "smallops.toml").write_text(f"[secrets]\n{table}\n")
    with pytest.raises(ConfigError, match=message):
        Settings.load(tmp_path, env={})


def test_several_processes_fetch_once_each_and_status_hears_from_both(
    project, capsys, tmp_path, emulator
):
    from faultkit import cli, inputs_file

    store = KeyScript(tmp_path / "store", new_key())
    emulator.default = respond(provider_accepting(lambda: store.key))
    add(project, f"api_key = '{store.reference}'\n")
    url = f"sqlite:///{project / '.smallops' / 'smallops.db'}"
    runs = [
        cli(project, url, "run", "email-triage", "-i", str(inputs_file(tmp_path / f"{i}.jsonl", 8)))
        for i in range(2)
    ]
    for process in runs:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert store.key not in err
    assert store.count == 2  # one fetch per process, for 8 calls each
    code, out, _ = smallops(capsys, "-p", str(project), "status", "--json")
    key = json.loads(out.splitlines()[0])["key"]
    assert code == 0 and key["state"] == "ok" and key["processes"] == 2
    assert store.key not in out
