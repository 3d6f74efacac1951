"""The key cache, through a real `command:` store (a script that counts its runs): TTL,
single-flight, stale serving up to max_stale, a bounded wait on a store that hangs, values
refused unrepeated, and health written for `status` without a value in it."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from smallops.config import SecretSettings
from smallops.secret_refs import SecretRef
from smallops.secrets.base import SecretStoreError
from smallops.secrets.cache import cache
from smallops.secrets.health import read_health

from keyscript import KeyScript


def new_key() -> str:
    return "acme-" + secrets.token_hex(16)  # no key pattern matches it: only registration hides it


@pytest.fixture
def store(tmp_path: Path) -> KeyScript:
    return KeyScript(tmp_path / "store", new_key())


def ref_of(script: KeyScript) -> SecretRef:
    return SecretRef.parse(script.reference)


def test_a_burst_of_threads_makes_one_fetch(store):
    store.set(mode="slow", delay=0.3)
    ref, policy = ref_of(store), SecretSettings()
    start = threading.Barrier(32)
    got: list[str] = []

    def caller() -> None:
        start.wait()
        got.append(cache.get(ref, policy).value)

    threads = [threading.Thread(target=caller) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [store.key] * 32
    assert store.count == 1
    assert cache.peek(ref, policy) == store.key  # at hand now: no fetch, no wait


def test_a_key_serves_for_cache_ttl_then_is_fetched_again(store):
    ref, policy = ref_of(store), SecretSettings(cache_ttl=0.4)
    first = cache.get(ref, policy).value
    for _ in range(20):
        assert cache.get(ref, policy).value == first
    assert store.count == 1
    store.set(key=new_key())
    time.sleep(0.45)
    assert cache.peek(ref, policy) is None  # expired: a caller must fetch
    assert cache.get(ref, policy).value == store.key != first
    assert store.count == 2


def test_while_the_store_fails_the_cached_key_serves_until_max_stale_then_none(store):
    """Every caller gets the stale key at once (the store is retried in the background, at
    most once a retry interval); past cache_ttl + max_stale the failure reaches the caller."""
    ref, policy = ref_of(store), SecretSettings(cache_ttl=0.3, max_stale=1.2)
    key = cache.get(ref, policy).value
    store.set(mode="fail")
    time.sleep(0.35)
    began = time.monotonic()
    assert cache.get(ref, policy).value == key  # the first caller waits for the failed fetch
    calls = 0
    while time.monotonic() - began < 1.0:
        assert cache.get(ref, policy).value == key
        calls += 1
        time.sleep(0.01)
    assert 2 <= store.count <= 2 + 1.0 / 0.3 + 1  # retried every cache_ttl, not every call
    assert calls > 30
    time.sleep(0.3)
    with pytest.raises(SecretStoreError) as failed:
        cache.get(ref, policy)
    message = failed.value.message
    assert "exited with status 3" in message and "store: connection refused" in message
    assert "cache_ttl + max_stale" in message and key not in message
    assert failed.value.unreachable
    store.set(mode="ok", key=new_key())
    time.sleep(0.35)
    assert cache.get(ref, policy).value == store.key  # back: a good fetch ends the outage


def test_a_store_that_answers_no_ends_an_expired_keys_service_at_once(tmp_path):
    """The program is gone (not found): an expired key is not served stale."""
    helper = tmp_path / "key-helper"
    helper.write_text(f"#!/bin/sh\necho {new_key()}\n")
    helper.chmod(0o755)
    ref, policy = SecretRef.parse(f"command:{helper}"), SecretSettings(cache_ttl=0.2, max_stale=60)
    cache.get(ref, policy)
    helper.unlink()
    time.sleep(0.25)
    with pytest.raises(SecretStoreError) as failed:
        cache.get(ref, policy)
    assert not failed.value.unreachable and "not found" in failed.value.message


def test_a_store_that_hangs_holds_a_caller_no_longer_than_fetch_timeout(store):
    ref, policy = ref_of(store), SecretSettings(fetch_timeout=0.5)
    store.set(mode="hang")
    began = time.monotonic()
    with pytest.raises(SecretStoreError) as failed:
        cache.get(ref, policy)
    waited = time.monotonic() - began
    assert 0.45 < waited < 0.9, waited
    assert failed.value.unreachable and "0.5 s" in failed.value.message
    began = time.monotonic()
    with pytest.raises(SecretStoreError):  # the next caller learns it at once
        cache.get(ref, policy)
    assert time.monotonic() - began < 0.1
    deadline = time.monotonic() + 3
    while _alive(store.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(store.pid), "the hung command was left running"


def test_a_hung_store_costs_one_caller_one_timeout_while_a_cached_key_serves(store):
    ref, policy = ref_of(store), SecretSettings(cache_ttl=0.2, max_stale=30, fetch_timeout=0.4)
    key = cache.get(ref, policy).value
    store.set(mode="hang")
    time.sleep(0.25)
    waits = []
    for _ in range(20):
        began = time.monotonic()
        assert cache.get(ref, policy).value == key
        waits.append(time.monotonic() - began)
    assert 0.35 < waits[0] < 0.8
    assert max(waits[1:]) < 0.05


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"", "printed nothing"),
        (b"\n", "printed nothing"),
        (b"part-one-%s\npart-two\n", "a line break"),
        (b"nul-\x00-%s", "a NUL"),
        ("clé-%s".encode(), "non-ASCII"),
        (b"\xff\xfe%s", "not UTF-8"),
        (b"k" * 20_000 + b"%s", "too long"),
        (b"k" * 70_000 + b"%s", "more than 64 KiB"),
        # a document of fields: sent whole, its other fields would go to the provider too
        (b'{"api_key": "%s", "db_password": "x"}', "a JSON object, not a key"),
        (b'["%s"]', None),  # not an object: text like any other
    ],
)
def test_values_a_header_cannot_carry_are_refused_and_never_repeated(store, raw, said):
    secret = secrets.token_hex(12)
    payload = raw.replace(b"%s", secret.encode()) if b"%s" in raw else raw
    store.set(mode="raw", raw=payload)
    ref, policy = ref_of(store), SecretSettings()
    if said is None:
        assert secret in cache.get(ref, policy).value
        return
    with pytest.raises(SecretStoreError) as failed:
        cache.get(ref, policy)
    text = f"{failed.value.message} {failed.value.hint}"
    assert said in text and secret not in text


def test_a_key_too_short_to_redact_is_refused_and_never_repeated(store):
    """The redactor leaves values under 8 characters alone (they match ordinary text), so a
    store's value that short could reach the log: it is refused instead."""
    short = secrets.token_hex(3) + "Q"  # 7 characters
    store.set(mode="raw", raw=short.encode())
    ref, policy = ref_of(store), SecretSettings()
    with pytest.raises(SecretStoreError) as failed:
        cache.get(ref, policy)
    text = f"{failed.value.message} {failed.value.hint}"
    assert "too short" in text and short not in text
    assert cache.peek(ref, policy) is None


def test_a_key_written_to_stderr_instead_of_stdout_is_not_shown(tmp_path):
    """A helper that succeeds with its key on the wrong stream: what it wrote is the key, so
    the error says where it went, never what it was."""
    key = new_key()
    helper = tmp_path / "bin" / "key"
    helper.parent.mkdir()
    helper.write_text(f"#!/bin/sh\necho '{key}' >&2\n")
    helper.chmod(0o755)
    with pytest.raises(SecretStoreError) as failed:
        cache.get(SecretRef.parse(f"command:{helper}"), SecretSettings())
    message = failed.value.message
    assert "printed nothing on its standard output" in message and key not in message


def test_a_store_repeating_its_own_token_in_an_error_has_it_masked(tmp_path, monkeypatch):
    """A helper (or a store) that says which credential it failed with: the value of a
    secret-named variable never reaches the message that status, the CLI and the log show."""
    token = secrets.token_hex(16)
    monkeypatch.setenv("TEAM_STORE_TOKEN", token)
    helper = tmp_path / "bin" / "key"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\necho "login failed for token $TEAM_STORE_TOKEN" >&2\nexit 1\n')
    helper.chmod(0o755)
    with pytest.raises(SecretStoreError) as failed:
        cache.get(SecretRef.parse(f"command:{helper}"), SecretSettings())
    message = failed.value.message
    assert "login failed for token [REDACTED]" in message and token not in message


def test_a_process_forked_during_a_fetch_fetches_for_itself(store):
    """A worker forked (gunicorn --preload, multiprocessing) while its parent's fetch runs: the
    fetch's thread is not in the child, so the child must not wait on it (nor on a lock held
    at the fork)."""
    store.set(mode="slow", delay=3)
    ref, policy = ref_of(store), SecretSettings(fetch_timeout=5)
    parent = threading.Thread(target=lambda: cache.get(ref, policy))
    parent.start()
    deadline = time.monotonic() + 5
    while store.count == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    store.set(mode="ok")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one second for a key of its own, then report
        os.close(read)
        code = 1
        try:
            started = time.monotonic()
            got = cache.get(ref, policy).value
            code = 0 if got == store.key and time.monotonic() - started < 2 else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        said = answer.read(1)
    os.waitpid(pid, 0)
    parent.join()
    assert said == bytes([0])


def test_whitespace_around_a_key_is_not_part_of_it(store):
    key = new_key()
    store.set(mode="raw", raw=f"  {key}\r\n".encode())
    assert cache.get(ref_of(store), SecretSettings()).value == key


def test_a_failing_command_is_named_by_its_program_and_status_never_its_output(store):
    """It printed the key and failed: stdout is never shown; stderr (which repeats the key)
    is shown redacted, the key having been registered before the message was made."""
    store.set(mode="leak")
    with pytest.raises(SecretStoreError) as failed:
        cache.get(ref_of(store), SecretSettings())
    message = failed.value.message
    assert "exited with status 2" in message and "python" in message
    assert store.key not in message


def test_a_missing_program_says_so(tmp_path):
    ref = SecretRef.parse(f"command:{tmp_path / 'no-such-helper'} show openai")
    with pytest.raises(SecretStoreError) as failed:
        cache.get(ref, SecretSettings())
    assert "not found" in failed.value.message and "give its path" in failed.value.hint


def test_health_for_status_has_times_and_problems_and_never_a_value(store, tmp_path):
    root = tmp_path / "project"
    folder = root / ".smallops" / "secrets"
    ref, policy = ref_of(store), SecretSettings(cache_ttl=0.2, max_stale=30)
    key = cache.get(ref, policy, root).value
    [report] = health_when(folder, lambda r: r["fetches"] == 1)
    assert report["reference"] == str(ref) and report["fetches"] == 1
    assert report["last_ok_at"] and report["stale_since"] is None and not report["problem"]
    store.set(mode="fail")
    time.sleep(0.25)
    assert cache.get(ref, policy, root).value == key
    [report] = health_when(folder, lambda r: r["problem"] is not None)
    assert report["stale_since"] and report["serving_until"] > time.time() + 25
    assert "status 3" in report["problem"]
    written = "".join(p.read_text() for p in folder.iterdir())
    assert key not in written
    assert json.loads((folder / f"keys-{os.getpid()}.json").read_text())["pid"] == os.getpid()


def health_when(folder: Path, done: Any) -> list[dict[str, Any]]:
    """The reports in `folder` once `done(report)` holds for each (the file is written just
    after the fetch's callers are answered)."""
    deadline = time.monotonic() + 3
    while True:
        reports = list(read_health(folder).values())
        if (reports and all(done(r) for r in reports)) or time.monotonic() > deadline:
            return reports
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead, only not yet reaped by its parent
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_relative_command_runs_in_its_projects_folder(tmp_path):
    """`command:./bin/key` is each project's own script: two projects, two keys."""
    keys = {}
    for name in ("one", "two"):
        root = tmp_path / name
        (root / "bin").mkdir(parents=True)
        keys[name] = new_key()
        helper = root / "bin" / "key"
        helper.write_text(f"#!/bin/sh\necho {keys[name]}\n")
        helper.chmod(0o755)
    ref = SecretRef.parse("command:./bin/key")
    for name, key in keys.items():
        assert cache.get(ref, SecretSettings(), tmp_path / name).value == key


def test_health_files_of_processes_silent_for_a_day_are_removed(store, tmp_path):
    folder = tmp_path / "project" / ".smallops" / "secrets"
    folder.mkdir(parents=True)
    old, recent = folder / "keys-1.json", folder / "keys-2.json"
    for path in (old, recent):
        path.write_text('{"pid": 1, "updated_at": 0, "references": {}}')
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    cache.get(ref_of(store), SecretSettings(), tmp_path / "project")
    health_when(folder, lambda r: r["fetches"] == 1)
    deadline = time.monotonic() + 3
    while old.exists() and time.monotonic() < deadline:  # swept just after the write
        time.sleep(0.01)
    assert not old.exists() and recent.exists()
