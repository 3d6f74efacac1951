"""Keys in AWS Secrets Manager, through boto3 against moto: in-process (`mock_aws`) and as a
moto server on 127.0.0.1 behind a TCP proxy that can cut or stall it.

The issue's acceptance test: K1 in the store, 50 calls, one fetch; the secret rotated to K2 and
the provider taking only K2: one 401, one refetch, then success; and neither key anywhere in
the database, the spool, the OpenTelemetry export or the command output. Then the store down:
the cached key serves until max_stale, then the calls go to the fallback, all recorded.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.secretsmanager.models import SecretsManagerBackend
from moto.server import ThreadedMotoServer

from smallops.config import SecretSettings
from smallops.secret_refs import SecretRef
from smallops.secrets.base import SecretStoreError
from smallops.secrets.cache import cache
from test_faults_secrets import _database_text

from conftest import EMAIL, smallops
from emulators import respond
from faultkit import database_down, engine_of
from keyscript import provider_accepting
from otlp_receiver import OtlpReceiver
from tcpproxy import TcpProxy

NAME = "prod/openai"


def new_key() -> str:
    return "acme-" + secrets.token_hex(16)  # matches no key pattern: only registration hides it


@dataclass
class Aws:
    client: Any  # boto3 Secrets Manager client, straight to the fake (not through the proxy)
    fetched: list[str]  # the secret ids of every GetSecretValue the fake answered
    proxy: TcpProxy | None = None  # in front of the moto server; None in-process

    def put(self, name: str, value: str | bytes) -> None:
        field = "SecretBinary" if isinstance(value, bytes) else "SecretString"
        try:
            self.client.create_secret(Name=name, **{field: value})
        except self.client.exceptions.ResourceExistsException:
            self.client.put_secret_value(SecretId=name, **{field: value})


@pytest.fixture(params=["in-process", "server"])
def aws(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    with fake_aws(request.param, monkeypatch) as found:
        yield found


@pytest.fixture
def aws_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """The moto server behind a proxy that can cut or stall it."""
    with fake_aws("server", monkeypatch) as found:
        yield found


@contextlib.contextmanager
def fake_aws(kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    # A fetch an earlier test gave up on (a stalled store) may still be retrying: once this
    # test's moto answers every AWS call in the process, it would be counted here.
    for thread in threading.enumerate():
        if thread.name == "smallops-secret-fetch":
            thread.join(30)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    fetched: list[str] = []
    answer = SecretsManagerBackend.get_secret_value

    def counted(self: Any, secret_id: str, *args: Any, **kwargs: Any) -> Any:
        fetched.append(secret_id)
        return answer(self, secret_id, *args, **kwargs)

    monkeypatch.setattr(SecretsManagerBackend, "get_secret_value", counted)
    if kind == "in-process":
        with mock_aws():
            yield Aws(boto3.client("secretsmanager", region_name="us-east-1"), fetched)
        return
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = TcpProxy((host, port))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    direct = boto3.client(
        "secretsmanager", region_name="us-east-1", endpoint_url=f"http://{host}:{port}"
    )
    try:
        yield Aws(direct, fetched, proxy)
    finally:
        proxy.close()
        server.stop()


def fetch(reference: str, **policy: float) -> Any:
    return cache.get(SecretRef.parse(reference), SecretSettings(**policy))


# -- the store -------------------------------------------------------------------------------


def test_a_json_field_a_whole_string_and_a_binary_secret(aws):
    key = new_key()
    aws.put(NAME, json.dumps({"api_key": key, "org": "acme"}))
    aws.put("plain", key + "\n")
    aws.put("binary", key.encode())
    fetched = fetch(f"aws-sm:{NAME}#api_key")
    assert fetched.value == key and fetched.version and fetched.updated_at is not None
    version = aws.client.describe_secret(SecretId=NAME)["VersionIdsToStages"]
    assert fetched.version in version
    assert fetch("aws-sm:plain").value == key
    assert fetch("aws-sm:binary").value == key
    arn = aws.client.describe_secret(SecretId="plain")["ARN"]
    assert fetch(f"aws-sm:{arn}").value == key


@pytest.mark.parametrize(
    ("stored", "reference", "said", "hint"),
    [
        (None, "aws-sm:nope", "no such secret", "AWS_DEFAULT_REGION"),
        ({"api_key": "%s"}, f"aws-sm:{NAME}#apikey", "has no field 'apikey'", "case-sensitive"),
        ({"api_key": "%s"}, f"aws-sm:{NAME}", "is a JSON object", f"aws-sm:{NAME}#api_key"),
        ("%s", f"aws-sm:{NAME}#api_key", "is not a JSON object", "drop #api_key"),
        ({"api_key": 12345678}, f"aws-sm:{NAME}#api_key", "is not a string", ""),
    ],
)
def test_what_the_store_cannot_give_is_named_with_a_hint_and_never_shown(
    aws, stored, reference, said, hint
):
    key = new_key()
    if stored is not None:
        text = json.dumps(stored) if isinstance(stored, dict) else stored
        aws.put(NAME, text.replace("%s", key))
    with pytest.raises(SecretStoreError) as failed:
        fetch(reference)
    error = failed.value
    assert error.message.startswith(reference + ": ") and said in error.message
    assert hint in error.hint and not error.unreachable
    assert key not in f"{error.message} {error.hint}"


def test_a_store_that_is_down_or_stalled_fails_within_fetch_timeout(aws_server):
    aws = aws_server
    assert aws.proxy is not None
    aws.put(NAME, new_key())
    aws.proxy.cut()
    began = time.monotonic()
    with pytest.raises(SecretStoreError) as failed:
        fetch(f"aws-sm:{NAME}", fetch_timeout=1)
    assert failed.value.unreachable and "did not answer" in failed.value.message
    assert time.monotonic() - began < 1.5
    aws.proxy.restore()
    aws.proxy.stall()
    cache.reset()
    began = time.monotonic()
    with pytest.raises(SecretStoreError) as failed:
        fetch(f"aws-sm:{NAME}", fetch_timeout=0.5)
    assert failed.value.unreachable and time.monotonic() - began < 0.9
    aws.proxy.resume()


# -- the acceptance test --------------------------------------------------------------------


def _keyed_project(project: Path, extra: str = "") -> None:
    toml = project / "smallops.toml"
    toml.write_text(toml.read_text() + f'api_key = "aws-sm:{NAME}#api_key"\n' + extra)


def _workflow(project: Path) -> Any:
    from smallops.project import Project

    return Project(project).workflow("email-triage")


def test_fifty_calls_one_fetch_a_rotation_one_401_and_no_key_written_anywhere(
    aws, project, emulator, database_url, monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("SMALLOPS_DATABASE_URL", database_url)
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    k1, k2 = new_key(), new_key()
    current = [k1]
    refused: list[str] = []
    emulator.default = respond(provider_accepting(lambda: current[0], refused))
    aws.put(NAME, json.dumps({"api_key": k1, "org": "acme"}))
    _keyed_project(project)
    wf = _workflow(project)
    results = [wf.run(**EMAIL) for _ in range(50)]
    assert {r.status for r in results} == {"pending_review"}
    assert aws.fetched == [NAME] and refused == []

    aws.put(NAME, json.dumps({"api_key": k2, "org": "acme"}))
    current[0] = k2
    rotated = wf.run(**EMAIL)
    assert rotated.status == "pending_review" and rotated.attempts == 1
    assert refused == [k1] and aws.fetched == [NAME, NAME]
    assert {wf.run(**EMAIL).status for _ in range(5)} == {"pending_review"}
    assert refused == [k1] and len(aws.fetched) == 2

    outputs: list[str] = []
    with monkeypatch.context() as patch:  # the database goes down: runs wait in the spool
        database_down(patch)
        wf.run(**EMAIL)
        wf.run(**{**EMAIL, "body": f"the old key was {k1}"})  # even typed into an input
        wf.plan().writer.flush(5)
        spooled = b"".join(p.read_bytes() for p in project.rglob("spool/*/*.jsonl"))
    assert spooled
    with OtlpReceiver() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        code, out, err = smallops(capsys, "-p", str(project), "export", "otel")
        assert code == 0, err
        outputs.append(out + err)
        exported = repr(collector.spans)
    assert "your key is" in exported  # the echoed text was exported, its key masked
    for args in (["logs", "--json", "-n", "100"], ["show", rotated.run_id, "--json"]):
        code, out, err = smallops(capsys, "-p", str(project), *args)
        assert code == 0, err
        outputs.append(out + err)
    places = {
        "the database": _database_text(database_url, project),
        "the spool": spooled.decode(),
        "the OpenTelemetry export": exported,
        "command output": "\n".join(outputs),
        "the secret health": "".join(
            p.read_text() for p in (project / ".smallops" / "secrets").glob("*")
        ),
    }
    if database_url.startswith("sqlite"):
        db = Path(database_url.removeprefix("sqlite:///"))
        files = list(db.parent.glob(db.name + "*"))
        places["the database files"] = b"".join(p.read_bytes() for p in files).decode("latin-1")
    engine_of(database_url, project).dispose()
    leaks = [where for where, text in places.items() for key in (k1, k2) if key in text]
    assert not leaks, f"a key leaked into {', '.join(leaks)}"
    assert "[REDACTED]" in places["the database"]


def test_store_down_the_cached_key_serves_until_max_stale_then_calls_go_to_the_fallback(
    aws_server, project, emulator, capsys
):
    aws = aws_server
    assert aws.proxy is not None
    ttl, stale = 1.0, 4.0  # a stale window wide enough for a loaded machine's slow calls
    key = new_key()
    emulator.default = respond(provider_accepting(lambda: key))
    aws.put(NAME, json.dumps({"api_key": key}))
    _keyed_project(project, f"\n[secrets]\ncache_ttl = {ttl}\nmax_stale = {stale}\n")
    wf = _workflow(project)
    wf.plan()  # built first: the call below is little more than the fetch and the request
    before = time.monotonic()
    assert wf.run(**EMAIL).status == "pending_review"
    after = time.monotonic()  # the key was fetched between the two: its age lies between
    aws.proxy.cut()
    seen: list[tuple[float, float, Any]] = []  # (at most, at least) the key's age, the result
    status_lines: dict[str, str] = {}
    while (least := time.monotonic() - after) < ttl + stale + 1.0:
        most = time.monotonic() - before
        seen.append((most, least, wf.run(**EMAIL)))
        if ttl + 0.3 < least and most < ttl + stale - 0.3 and "stale" not in status_lines:
            status_lines["stale"] = _status(capsys, project)
        time.sleep(0.05)
    status_lines["unavailable"] = _status(capsys, project)
    for most, least, result in seen:
        if most < ttl + stale - 0.3:
            assert result.status == "pending_review", (most, result.error_message)
        elif least > ttl + stale + 0.3:
            assert result.status == "queued_for_human" and result.error == "secret_unavailable"
            assert f"aws-sm:{NAME}#api_key" in (result.error_message or "")
            assert "did not answer" in (result.error_message or "")
    stale_line = status_lines["stale"]
    assert "the store has not answered since" in stale_line and "serves until" in stale_line
    assert (
        "unavailable" in status_lines["unavailable"]
        and "secret_unavailable" in (status_lines["unavailable"])
    )
    from smallops.testing import recorded_runs

    runs = recorded_runs(wf)
    assert len(runs) == len(seen) + 1  # every call recorded, none lost
    assert any(r["error_type"] == "secret_unavailable" for r in runs)
    aws.proxy.restore()
    time.sleep(min(ttl, 10) + 0.1)
    assert wf.run(**EMAIL).status == "pending_review"  # the store is back: so is the key


def _status(capsys: Any, project: Path) -> str:
    code, out, err = smallops(capsys, "-p", str(project), "status")
    assert code == 0, err
    return " ".join(out.split())
