"""Provider keys from a store, through the real SDKs and the emulator: one fetch for many
calls, a rotation answered by one refetch within the same attempt (never a breaker failure),
a 403 that is no rotation, and a call with no key sent to the fallback as secret_unavailable."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from smallops import WorkflowFailed
from smallops import default as smallops_default
from smallops.config import ProviderConfig, SecretSettings
from smallops.secret_refs import SecretRef
from smallops.testing import recorded_runs

from conftest import EMAIL, smallops
from emulators import respond, status
from keyscript import KeyScript, provider_accepting

BASE = {"openai": "openai_base_url", "anthropic": "anthropic_base_url"}
MODELS = {"openai": "openai:gpt-4o-mini-2024-07-18", "anthropic": "anthropic:claude-sonnet-4-6"}


def new_key() -> str:
    return "acme-" + secrets.token_hex(16)


@pytest.fixture
def store(tmp_path: Path) -> KeyScript:
    return KeyScript(tmp_path / "store", new_key())


@pytest.fixture
def keyed(make_workflow, settings, emulator, store) -> Any:
    """`keyed(kind="openai", policy=..., **workflow options)`: a workflow whose provider's key
    is in the command store."""

    def make(kind: str = "openai", policy: SecretSettings | None = None, **options: Any) -> Any:
        provider = ProviderConfig(
            kind,
            kind,
            base_url=getattr(emulator, BASE[kind]),
            api_key=SecretRef.parse(store.reference),
        )
        project = replace(settings, providers={kind: provider}, secrets=policy or SecretSettings())
        return make_workflow(model=MODELS[kind], settings=project, **options)

    return make


def sent_keys(emulator: Any) -> list[str]:
    return [
        r.headers.get("authorization", "").removeprefix("Bearer ") or r.headers.get("x-api-key", "")
        for r in emulator.requests
    ]


def breaker_counts(wf: Any) -> tuple[int, int]:
    guards = wf.plan().guards
    state = guards.breaker.state(guards.breaker_key, guards.breaker_config)
    return state["calls"], state["failures"]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_many_calls_make_one_fetch_and_a_rotation_costs_one_401_and_one_refetch(
    keyed, store, emulator, kind
):
    refused: list[str] = []
    emulator.default = respond(provider_accepting(lambda: store.key, refused))
    wf = keyed(kind)
    first = store.key
    for _ in range(20):
        assert wf.run(**EMAIL).status == "pending_review"
    assert store.count == 1 and set(sent_keys(emulator)) == {first} and refused == []
    store.set(key=new_key())  # rotated: the provider now takes only the new key
    result = wf.run(**EMAIL)
    assert result.status == "pending_review" and result.attempts == 1
    assert refused == [first] and store.count == 2
    for _ in range(5):
        assert wf.run(**EMAIL).status == "pending_review"
    assert refused == [first] and store.count == 2
    runs = recorded_runs(wf)
    assert all(r["error_type"] is None for r in runs)
    assert breaker_counts(wf) == (26, 0)  # the 401 answered by a new key is no failure


def test_concurrent_401s_with_the_same_old_key_make_one_refetch(keyed, store, emulator):
    refused: list[str] = []
    emulator.default = respond(provider_accepting(lambda: store.key, refused, delay_401=0.3))
    # Each attempt waits out the 401, one refetch (a process started) and a second request:
    # a loaded machine can take past the usual 2 s, which would be timeouts, not what is tested.
    wf = keyed(timeout=10.0, deadline=30.0)
    wf.run(**EMAIL)
    old = store.key
    store.set(key=new_key())
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(wf.run(**EMAIL))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [(r.status, r.error) for r in results] == [("pending_review", None)] * 16
    assert refused == [old] * 16  # all were in flight with the old key
    assert store.count == 2  # and one fetch answered them all


def test_async_calls_fetch_once_in_a_thread_and_rotate_alike(keyed, store, emulator):
    """A burst of tasks at start: one fetch, run in a worker thread while the event loop keeps
    ticking; then a rotation seen by concurrent tasks: one refetch."""
    refused: list[str] = []
    emulator.default = respond(provider_accepting(lambda: store.key, refused, delay_401=0.2))
    store.set(mode="slow", delay=1.5)  # a fetch that blocked the loop would stall it 1.5 s
    wf = keyed()
    wf.plan()  # built once, in the loop's thread (schema, writer): not what is measured here
    assert store.count == 0

    async def main() -> tuple[list[Any], float, list[Any]]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        first = await asyncio.gather(*(wf.arun(**EMAIL) for _ in range(50)))
        store.set(key=new_key())
        second = await asyncio.gather(*(wf.arun(**EMAIL) for _ in range(8)))
        stop.set()
        await ticking
        return first, max(gaps), second

    first, worst_gap, second = asyncio.run(main())
    assert [r.status for r in first + second] == ["pending_review"] * 58
    assert store.count == 2
    assert len(refused) == 8
    assert worst_gap < 1.0, f"the event loop stalled {worst_gap:.2f} s"


def test_a_403_is_not_a_rotation(keyed, store, emulator):
    emulator.default = status(403, message="this key may not use this model")
    wf = keyed()
    result = wf.run(**EMAIL)
    assert result.error == "auth_error" and result.status == "queued_for_human"
    assert store.count == 1 and len(emulator.requests) == 1


def test_an_unchanged_key_leaves_the_401_standing_and_is_not_fetched_again_at_once(
    keyed, store, emulator
):
    emulator.default = respond(provider_accepting(lambda: "no key will do"))
    wf = keyed()
    first = wf.run(**EMAIL)
    assert first.error == "auth_error" and store.count == 2
    assert "fetched again: unchanged" in (first.error_message or "")
    assert store.key not in (first.error_message or "") and "[REDACTED]" in first.error_message
    second = wf.run(**EMAIL)
    assert second.error == "auth_error" and store.count == 2  # a revoked key: no fetch per call
    assert breaker_counts(wf) == (2, 0)
    recorded = repr(recorded_runs(wf))
    assert store.key not in recorded


def test_a_store_down_at_rotation_is_said_so_not_that_the_key_is_unchanged(keyed, store, emulator):
    """The 401 stands (the old key is refused, no new one can be had); its message says the
    store could not give a key, not that it gave the same one."""
    accepted = [store.key]
    emulator.default = respond(provider_accepting(lambda: accepted[0]))
    wf = keyed()
    assert wf.run(**EMAIL).error is None and store.count == 1
    accepted[0] = new_key()  # rotated at the provider; the store goes down at that moment
    store.set(mode="fail")
    result = wf.run(**EMAIL)
    message = result.error_message or ""
    assert result.error == "auth_error" and result.status == "queued_for_human"
    assert "could not be fetched again" in message and "exited with status 3" in message
    assert "unchanged" not in message and store.key not in message
    assert store.count == 2 and breaker_counts(wf) == (2, 0)


def test_while_the_store_is_down_after_a_rotation_401s_do_not_each_wait_on_it(
    keyed, store, emulator
):
    """The key was rotated and the store hangs: the first 401 waits fetch_timeout for it, the
    calls after it (within the retry interval) learn at once that no new key can be had."""
    accepted = [store.key]
    emulator.default = respond(provider_accepting(lambda: accepted[0]))
    wf = keyed(policy=SecretSettings(fetch_timeout=0.5))
    assert wf.run(**EMAIL).error is None and store.count == 1
    accepted[0] = new_key()
    store.set(mode="hang")
    took = []
    for _ in range(4):
        started = time.monotonic()
        result = wf.run(**EMAIL)
        took.append(time.monotonic() - started)
        assert result.error == "auth_error" and "could not be fetched again" in (
            result.error_message or ""
        )
    assert store.count == 2  # one refetch, however many calls saw the key refused
    assert took[0] >= 0.5 and max(took[1:]) < 0.4, took


def test_no_key_sends_the_call_to_the_fallback_as_secret_unavailable(keyed, store, emulator):
    store.set(mode="fail")
    wf = keyed()
    result = wf.run(**EMAIL)
    assert result.status == "queued_for_human" and result.error == "secret_unavailable"
    assert "no key for provider 'openai'" in (result.error_message or "")
    assert "exited with status 3" in (result.error_message or "")
    assert result.attempts == 0 and emulator.requests == []
    [run] = recorded_runs(wf)
    assert run["error_type"] == "secret_unavailable" and run["status"] == "queued_for_human"
    assert breaker_counts(wf) == (0, 0)
    default = keyed(
        fallback=smallops_default({"category": "other", "urgency": "low", "summary": "-"})
    )
    assert default.run(**EMAIL).status == "fallback_default"
    with pytest.raises(WorkflowFailed) as failed:
        keyed(fallback="raise").run(**EMAIL)
    assert failed.value.error_type == "secret_unavailable"


def test_a_forked_child_opens_its_own_connection(emulator, monkeypatch):
    """The parent's client holds a keep-alive connection; a child forked after it must not
    send on that socket too (both processes would read its responses)."""
    import os

    from smallops.providers.openai import OpenAIProvider

    monkeypatch.setenv("OPENAI_API_KEY", new_key())
    provider = OpenAIProvider(base_url=emulator.openai_base_url)
    request = {"model": "gpt-4o-mini-2024-07-18", "messages": [{"role": "user", "content": "hi"}]}
    provider.send(request, timeout=5)
    pid = os.fork()
    if pid == 0:
        try:
            provider.send(request, timeout=5)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    parent, child = (r.peer for r in emulator.requests)
    assert parent is not None and child is not None and parent != child


def test_a_changed_env_key_is_used_by_the_next_call(make_workflow, emulator, monkeypatch):
    key = new_key()
    monkeypatch.setenv("OPENAI_API_KEY", key)
    emulator.default = respond(provider_accepting(lambda: key))
    wf = make_workflow()
    assert wf.run(**EMAIL).status == "pending_review"
    key = new_key()
    monkeypatch.setenv("OPENAI_API_KEY", key)
    assert wf.run(**EMAIL).status == "pending_review"
    assert sent_keys(emulator)[-1] == key


def test_keys_are_not_fetched_to_define_workflows_nor_by_smallops_check(
    project, store, capsys, emulator
):
    toml = project / "smallops.toml"
    toml.write_text(toml.read_text() + f"api_key = '{store.reference}'\n")
    smallops(capsys, "-p", str(project), "check")
    assert store.count == 0, "smallops check fetched a key"
    from smallops.project import Project

    workflows = Project(project).workflows
    assert workflows and store.count == 0
    emulator.default = respond(provider_accepting(lambda: store.key))
    code, _, _ = smallops(capsys, "-p", str(project), "run", "email-triage", "--json", "{}")
    assert store.count == 0 and code == 2  # bad inputs: refused before any key is needed
    code, out, _ = smallops(
        capsys, "-p", str(project), "run", "email-triage", "--json", json.dumps(EMAIL)
    )
    assert code == 0 and store.count == 1 and "pending_review" in out


def test_smallops_run_fetches_the_key_before_its_batch_and_stops_at_one_line(
    project, store, capsys, emulator, tmp_path
):
    """A store that does not answer: exit 1; a program that is not there: exit 2. Either way
    one line, no request and no run in the review queue."""
    toml = project / "smallops.toml"
    toml.write_text(toml.read_text() + f"api_key = '{store.reference}'\n")
    store.set(mode="fail")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps(EMAIL) for _ in range(5)) + "\n")
    code, out, err = smallops(capsys, "-p", str(project), "run", "email-triage", "-i", str(inputs))
    assert code == 1 and err.count("\n") == 1 and emulator.requests == []
    assert err.startswith("error: no key for provider 'openai': command:")
    assert "exited with status 3" in err and store.count == 1
    toml.write_text(toml.read_text().replace(store.reference, "command:./no-such-helper"))
    code, out, err = smallops(capsys, "-p", str(project), "run", "email-triage", "-i", str(inputs))
    assert code == 2 and "program `./no-such-helper` not found" in err
    code, out, _ = smallops(capsys, "-p", str(project), "logs", "--json")
    assert out == "" and emulator.requests == []


def test_a_vault_key_rotates_the_same_way(make_workflow, settings, emulator, monkeypatch, tmp_path):
    """Any store behind the cache: Vault KV v2 (hvac, against a local Vault), one fetch for
    many calls, then one 401 and one refetch when a new version is written."""
    from vault_fake import VaultFake

    for name in ("VAULT_TOKEN", "VAULT_NAMESPACE", "VAULT_ROLE_ID", "VAULT_SECRET_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with VaultFake() as vault:
        monkeypatch.setenv("VAULT_ADDR", vault.url)
        monkeypatch.setenv("VAULT_TOKEN", vault.root_token)
        keys = [new_key()]
        vault.put("secret", "team/openai", {"api_key": keys[0]})
        refused: list[str] = []
        emulator.default = respond(provider_accepting(lambda: keys[-1], refused))
        provider = ProviderConfig(
            "openai",
            "openai",
            base_url=emulator.openai_base_url,
            api_key=SecretRef.parse("vault:secret/team/openai#api_key"),
        )
        wf = make_workflow(settings=replace(settings, providers={"openai": provider}))
        assert {wf.run(**EMAIL).status for _ in range(10)} == {"pending_review"}
        keys.append(new_key())
        vault.put("secret", "team/openai", {"api_key": keys[-1]})
        assert wf.run(**EMAIL).status == "pending_review"
        reads = [r for r in vault.requests if r.path == "/v1/secret/data/team/openai"]
    assert refused == [keys[0]] and len(reads) == 2
    assert keys[0] not in repr(recorded_runs(wf)) and keys[1] not in repr(recorded_runs(wf))
