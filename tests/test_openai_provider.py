"""The openai provider through the official SDK against a real local HTTP server.

Every failure the API can have ends in its own recorded status, and retries honour Retry-After
under the call's deadline. Each test runs the sync and the async path.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from smallops import WorkflowFailed
from smallops.ids import uuid7
from smallops.testing import recorded_runs

from emulators import delay, disconnect, malformed, ok, refusal, status, truncated
from models import GOOD

INPUTS = {"subject": "Invoice", "body": "Where is my May invoice?"}


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Any:
    """Call a workflow through run() or arun(): both must behave the same."""
    if request.param == "sync":
        return lambda wf, **inputs: wf.run(**inputs)
    return lambda wf, **inputs: asyncio.run(wf.arun(**inputs))


def test_success_is_recorded_with_tokens_model_fingerprint_and_cost(make_workflow, emulator, call):
    emulator.script(
        ok(GOOD, input_tokens=120, output_tokens=30, cached_tokens=100, fingerprint="fp_abc")
    )
    wf = make_workflow()
    result = call(wf, **INPUTS)
    assert result.status == "pending_review" and result.output.category == "billing"
    [run] = recorded_runs(wf)
    assert run["id"] == result.run_id
    assert run["status"] == "pending_review" and run["error_type"] is None
    assert run["model_requested"] == run["model_served"] == "gpt-4o-mini-2024-07-18"
    assert run["model_mismatch"] is False
    assert run["system_fingerprint"] == "fp_abc"
    assert (run["input_tokens"], run["output_tokens"], run["cached_tokens"]) == (120, 30, 100)
    # gpt-4o-mini: $0.15/M input, $0.075/M cached input, $0.60/M output
    expected = (20 * 0.15 + 100 * 0.075 + 30 * 0.60) / 1e6
    assert run["cost_usd"] == pytest.approx(expected) and run["cost_source"] == "genai-prices"
    assert run["inputs"] == INPUTS
    assert run["output"] == GOOD
    assert run["messages"][1] == {
        "role": "user",
        "content": "Subject: Invoice\n\nWhere is my May invoice?",
    }
    [attempt] = run["attempts"]
    assert attempt["request"]["response_format"]["json_schema"]["strict"] is True
    assert json.loads(attempt["response"])["system_fingerprint"] == "fp_abc"
    assert run["prompt_version"] == wf.version.id


def test_structured_output_is_requested_as_strict_json_schema(make_workflow, emulator, call):
    emulator.script(ok(GOOD))
    wf = make_workflow(temperature=0, max_tokens=300)
    call(wf, **INPUTS)
    body = emulator.requests[-1].body
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"category", "urgency", "summary"}
    assert body["temperature"] == 0 and body["max_completion_tokens"] == 300
    [run] = recorded_runs(wf)
    assert body == run["attempts"][0]["request"]  # the wire request is the one on record


def test_served_model_other_than_pinned_is_flagged(make_workflow, emulator, call):
    emulator.script(ok(GOOD, model="gpt-4o-mini-2025-01-01"))
    wf = make_workflow()
    call(wf, **INPUTS)
    [run] = recorded_runs(wf)
    assert run["model_served"] == "gpt-4o-mini-2025-01-01" and run["model_mismatch"] is True


def test_429_with_retry_after_is_waited_out_then_succeeds(make_workflow, emulator, call):
    emulator.script(status(429, retry_after=0.6), ok(GOOD))
    wf = make_workflow()
    started = time.perf_counter()
    result = call(wf, **INPUTS)
    assert time.perf_counter() - started >= 0.6
    assert result.status == "pending_review" and result.attempts == 2
    [run] = recorded_runs(wf)
    first, second = run["attempts"]
    assert first["error_type"] == "rate_limited" and first["status_code"] == 429
    assert first["retry_in_s"] >= 0.6
    assert second["status_code"] == 200


def test_429_asking_to_wait_past_the_deadline_goes_to_the_fallback_at_once(
    make_workflow, emulator, call
):
    emulator.script(status(429, retry_after=60))
    wf = make_workflow(deadline=5)
    started = time.perf_counter()
    result = call(wf, **INPUTS)
    assert time.perf_counter() - started < 2
    assert result.status == "queued_for_human" and result.error == "rate_limited"
    assert recorded_runs(wf)[0]["error_type"] == "rate_limited"


def test_500_is_retried(make_workflow, emulator, call):
    emulator.script(status(500), status(503), ok(GOOD))
    result = call(make_workflow(), **INPUTS)
    assert result.status == "pending_review" and result.attempts == 3


def test_persistent_500_ends_as_server_error_after_the_retries(make_workflow, emulator, call):
    emulator.default = status(500)
    wf = make_workflow(retries=2)
    result = call(wf, **INPUTS)
    assert result.status == "queued_for_human" and result.error == "server_error"
    [run] = recorded_runs(wf)
    assert run["attempt_count"] == 3 and run["error_message"].startswith("HTTP 500")
    assert len(emulator.requests) == 3


def test_timeouts_are_retried_then_sent_to_the_fallback(make_workflow, emulator, call):
    emulator.default = delay(3)
    wf = make_workflow(timeout=0.3, retries=1)
    result = call(wf, **INPUTS)
    assert result.status == "queued_for_human" and result.error == "timeout"
    assert result.attempts == 2


def test_a_slow_answer_within_the_timeout_succeeds(make_workflow, emulator, call):
    emulator.script(delay(0.2, then=ok(GOOD)))
    assert call(make_workflow(timeout=2), **INPUTS).status == "pending_review"


def test_the_deadline_bounds_the_whole_call(make_workflow, emulator, call):
    emulator.default = delay(5)
    wf = make_workflow(timeout=2, deadline=1.0, retries=5)  # set up outside the timing
    started = time.perf_counter()
    result = call(wf, **INPUTS)
    assert time.perf_counter() - started < 1.8
    assert result.error == "timeout"


def test_malformed_response_body_is_a_bad_response(make_workflow, emulator, call):
    emulator.default = malformed()
    wf = make_workflow(retries=1)
    result = call(wf, **INPUTS)
    assert result.error == "bad_response" and result.attempts == 2
    assert recorded_runs(wf)[0]["attempts"][0]["response"].startswith('{"id": "chatcmpl-1"')


def test_dropped_connection_is_a_connection_error(make_workflow, emulator, call):
    emulator.default = disconnect()
    result = call(make_workflow(retries=1), **INPUTS)
    assert result.error == "connection_error" and result.attempts == 2


def test_refusal_is_recorded_as_refused_without_repair(make_workflow, emulator, call):
    emulator.script(refusal("I can't help with that."))
    wf = make_workflow()
    result = call(wf, **INPUTS)
    assert result.status == "queued_for_human" and result.error == "refused"
    assert result.error_message == "I can't help with that." and result.attempts == 1


def test_truncation_is_recorded_as_truncated(make_workflow, emulator, call):
    emulator.script(truncated('{"category": "bil'))
    result = call(make_workflow(), **INPUTS)
    assert result.error == "truncated" and result.attempts == 1


def test_invalid_json_is_repaired_once_with_the_error(make_workflow, emulator, call):
    emulator.script(ok("Sure! category: billing"), ok(GOOD))
    wf = make_workflow()
    result = call(wf, **INPUTS)
    assert result.status == "pending_review" and result.attempts == 2
    repair = emulator.requests[-1].body["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! category: billing"}
    assert "not valid JSON" in repair[-1]["content"]
    assert [a["purpose"] for a in recorded_runs(wf)[0]["attempts"]] == ["call", "repair"]


def test_invalid_json_twice_is_recorded_as_invalid_json(make_workflow, emulator, call):
    emulator.default = ok("not json at all")
    result = call(make_workflow(), **INPUTS)
    assert result.error == "invalid_json" and result.attempts == 2


def test_schema_mismatch_carries_the_validation_error_into_the_repair(
    make_workflow, emulator, call
):
    emulator.script(ok({**GOOD, "urgency": "whenever"}), ok({**GOOD, "summary": "x" * 200}))
    wf = make_workflow()
    result = call(wf, **INPUTS)
    assert result.status == "queued_for_human" and result.error == "schema_mismatch"
    assert "summary" in result.error_message
    assert "urgency" in emulator.requests[1].body["messages"][-1]["content"]


def test_auth_error_is_not_retried_and_the_key_is_never_recorded(make_workflow, emulator, call):
    from conftest import OPENAI_TEST_KEY

    emulator.default = status(401, message=f"Incorrect API key provided: {OPENAI_TEST_KEY}")
    wf = make_workflow()
    result = call(wf, **INPUTS)
    assert result.error == "auth_error" and result.attempts == 1
    [run] = recorded_runs(wf)
    assert OPENAI_TEST_KEY not in json.dumps(run, default=str)
    assert "[REDACTED]" in run["error_message"]
    assert emulator.requests[-1].headers["authorization"] == f"Bearer {OPENAI_TEST_KEY}"


def test_fallback_raise_records_the_run_then_raises(make_workflow, emulator, call):
    emulator.script(refusal())
    wf = make_workflow(fallback="raise")
    with pytest.raises(WorkflowFailed) as caught:
        call(wf, **INPUTS)
    assert caught.value.error_type == "refused"
    [run] = recorded_runs(wf)
    assert run["id"] == caught.value.run_id and run["status"] == "failed"


def test_free_text_workflow_returns_the_text(make_workflow, emulator, call):
    emulator.script(ok("A plain answer."))
    result = call(make_workflow(output=None), **INPUTS)
    assert result.output == "A plain answer."
    assert "response_format" not in emulator.requests[-1].body


def test_openai_compatible_server_gets_max_tokens_and_needs_no_key(
    tmp_path, settings, emulator, monkeypatch
):
    from dataclasses import replace

    from smallops import Workflow
    from smallops.config import ProviderConfig

    monkeypatch.delenv("OPENAI_API_KEY")
    (tmp_path / "p.prompt").write_text("[user]\n{{ q }}")
    local = replace(
        settings,
        providers={"ollama": ProviderConfig("ollama", "openai", base_url=emulator.openai_base_url)},
    )
    wf = Workflow(
        "local",
        model="ollama:llama3.1:8b",
        prompt="p.prompt",
        fallback="review",
        max_tokens=50,
        settings=local,
        base_dir=tmp_path,
    )
    assert wf.run(q="hi").status == "pending_review"
    assert emulator.requests[-1].body["max_tokens"] == 50
    assert recorded_runs(wf)[0]["cost_source"] == "unpriced"


def test_a_named_compatible_server_never_gets_openais_key(
    tmp_path, settings, emulator, monkeypatch
):
    """[providers.ollama] without api_key reads OLLAMA_API_KEY (else sends a placeholder):
    OPENAI_API_KEY goes only to OpenAI, never to whoever runs another server."""
    from dataclasses import replace

    from smallops import Workflow
    from smallops.config import ProviderConfig

    openai_key = "sk-" + uuid7().replace("-", "")
    monkeypatch.setenv("OPENAI_API_KEY", openai_key)
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    (tmp_path / "p.prompt").write_text("[user]\n{{ q }}")
    local = replace(
        settings,
        providers={"ollama": ProviderConfig("ollama", "openai", base_url=emulator.openai_base_url)},
    )
    assert "OLLAMA_API_KEY" in local.key_variables
    wf = Workflow(
        "local",
        model="ollama:llama3.1:8b",
        prompt="p.prompt",
        fallback="review",
        settings=local,
        base_dir=tmp_path,
    )
    wf.run(q="hi")
    assert emulator.requests[-1].headers["authorization"] == "Bearer unused"
    own = "ollama-" + uuid7().replace("-", "")
    monkeypatch.setenv("OLLAMA_API_KEY", own)
    wf.run(q="hi again")
    assert emulator.requests[-1].headers["authorization"] == f"Bearer {own}"
    assert all(openai_key not in str(request.headers) for request in emulator.requests)


def test_64_concurrent_async_calls_are_all_recorded(make_workflow, emulator):
    wf = make_workflow()
    emulator.default = ok(GOOD)

    async def many() -> list[Any]:
        return list(await asyncio.gather(*(wf.arun(**INPUTS) for _ in range(64))))

    results = asyncio.run(many())
    assert {r.status for r in results} == {"pending_review"}
    assert {r["id"] for r in recorded_runs(wf)} == {r.run_id for r in results}


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
def test_the_endpoint_is_recorded_when_the_sdk_variable_sets_it(
    tmp_path, emulator, monkeypatch, database_url, vendor
):
    """OPENAI_BASE_URL / ANTHROPIC_BASE_URL, which the SDKs read, is where the call went: the
    run records it (without the user and password it may carry), and it was used."""
    from smallops import Settings, Workflow

    from models import Triage

    base = emulator.openai_base_url if vendor == "openai" else emulator.anthropic_base_url
    with_secrets = base.replace("://", "://tenant:s3cret@")
    monkeypatch.setenv(f"{vendor.upper()}_BASE_URL", with_secrets)
    (tmp_path / "p.prompt").write_text("[user]\n{{ subject }}: {{ body }}")
    model = "gpt-4o-mini-2024-07-18" if vendor == "openai" else "claude-haiku-4-5-20251001"
    wf = Workflow(
        f"via-{vendor}",
        model=f"{vendor}:{model}",
        prompt="p.prompt",
        output=Triage,
        fallback="review",
        settings=Settings(root=tmp_path, database_url=database_url),
        base_dir=tmp_path,
    )
    emulator.script(ok(GOOD))
    assert wf.run(**INPUTS).status == "pending_review"
    assert len(emulator.requests) == 1
    [run] = recorded_runs(wf)
    assert run["endpoint"] == base and "s3cret" not in json.dumps(run, default=str)


def test_the_default_endpoints_are_recorded_and_the_variable_is_read_when_it_changes(
    tmp_path, emulator, monkeypatch
):
    """With no base_url and no variable, runs record the vendor's own endpoint (never empty)."""
    from smallops import Settings, Workflow
    from smallops.providers import resolve_provider

    settings = Settings(root=tmp_path, database_url=f"sqlite:///{tmp_path / 'log.db'}")
    assert resolve_provider("openai", settings.providers).endpoint == "https://api.openai.com/v1"
    assert resolve_provider("anthropic", settings.providers).endpoint == "https://api.anthropic.com"
    (tmp_path / "p.prompt").write_text("[user]\n{{ q }}")
    wf = Workflow(
        "default-endpoint",
        model="openai:gpt-4o-mini-2024-07-18",
        prompt="p.prompt",
        fallback="review",
        settings=settings,
        base_dir=tmp_path,
    )
    assert wf.plan().facts.endpoint == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", emulator.openai_base_url)
    assert resolve_provider("openai", settings.providers).endpoint == emulator.openai_base_url
